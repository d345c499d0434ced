"""One writer per run folder: an OS file lock (`fcntl.flock`) on `OUTPUT_DIR/.RUN_NAME.lock`, beside the folder
(an overwrite renames the folder itself aside), held by train from its first stage to metrics.json, by
`eval --run` and by `export`. A second writer gets one line naming the holder; a lock dies with its process,
so a killed run never blocks the next one. The lock file records who holds it, and is removed on release.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from unsloth_sft.core.errors import RunError
from unsloth_sft.core.files import cannot_write, write_problem

_HELD: dict[str, RunLock] = {}  # this process's locks by file: a notebook that reruns a cell takes its own back


def lock_path(run_dir: str | os.PathLike) -> Path:
    run_dir = Path(run_dir)
    return run_dir.with_name(f".{run_dir.name}.lock")


def holder(path: Path) -> dict | None:
    """What the lock file records of its holder ({"pid", "host", "command", "since"}), None without one."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def holder_text(path: Path) -> str:
    info = holder(path)
    if info is None:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('command')}, since {since})"


class RunLock:
    """An exclusive lock on one run folder, held until `release` (or until the process ends).

    `path` and `fix` serve other folders with one writer (a sweep folder: its `.sweep.lock`, "choose another --out").
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        path: str | os.PathLike | None = None,
        fix: str = "one process writes a run folder at a time; wait for it to finish, or choose another run_name",
    ):
        self.run_dir = Path(run_dir)
        self.path = Path(path) if path is not None else lock_path(self.run_dir)
        self.fix = fix
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        held = _HELD.get(str(self.path.absolute()))
        if held is not None:  # this very process holds it (an earlier cell's run): take it over
            held.release()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise RunError(f"{self.run_dir} is in use by {holder_text(self.path)}: {self.fix}") from None
                if os.path.exists(self.path) and os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
                os.close(fd)  # the holder removed the file as we opened it: try the new one
        except OSError as err:
            if write_problem(err) is None:
                raise
            raise cannot_write(self.run_dir, err) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv[:3]),
            "since": time.time(),
        }
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        self.fd = fd
        _HELD[str(self.path.absolute())] = self
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # first, while still holding it: nobody can take a file that is about to go
        os.close(self.fd)
        self.fd = None
        _HELD.pop(str(self.path.absolute()), None)

    @property
    def held(self) -> bool:
        return self.fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def locked(run_dir: str | os.PathLike) -> RunLock:
    """The run folder's lock, to hold for a `with` block (eval --run, export)."""
    return RunLock(run_dir)
