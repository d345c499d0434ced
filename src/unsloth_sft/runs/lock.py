"""One writer per run folder: a lock on `OUTPUT_DIR/.RUN_NAME.lock`, beside the folder (an overwrite renames the
folder itself aside), held by train from its first stage to metrics.json, by `eval --run` and by `export`. A second
writer gets one line naming the holder. The lock file records who holds it, and is removed on release.

Two kinds of lock, one file name:
- `flock` (local disks): an OS lock (`fcntl.flock`) that dies with its process, so a killed run blocks nobody.
- `exclusive file` (Google Drive's FUSE mount in Colab, NFS, SMB and other network or FUSE file systems, where
  `flock` fails or only locks this machine): the lock file itself, created with O_CREAT | O_EXCL, holding the
  holder's host and pid. A file left by a dead process on this host is taken over, with one line; one left by
  another host is refused, naming it and how to clear it (a runtime that disconnected cannot be asked).
The kind is chosen per lock: UNSLOTH_SFT_LOCK=flock or =file forces one; otherwise (auto) the exclusive file on a
network or FUSE file system (read from /proc/mounts), else flock, and the exclusive file when flock fails.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from unsloth_sft.core.errors import RunError
from unsloth_sft.core.files import cannot_write, pid_alive, write_problem

_HELD: dict[str, RunLock] = {}  # this process's locks by file: a notebook that reruns a cell takes its own back
LOCK_ENV = "UNSLOTH_SFT_LOCK"  # flock | file | auto (default)
# flock's answers on a file system that has no locks (FUSE without lock support, NFS without lockd, SMB ...)
NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "gpfs", "afs", "davfs")
GUARD_STALE_S = 30  # a takeover guard older than this was left by a process killed mid-takeover (it takes ~1 ms)


def lock_path(run_dir: str | os.PathLike) -> Path:
    run_dir = Path(run_dir)
    return run_dir.with_name(f".{run_dir.name}.lock")


def holder(path: Path) -> dict | None:
    """What the lock file records of its holder ({"pid", "host", "command", "since", "kind"}), None without one."""
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


def file_system(path: Path) -> str | None:
    """The type of the file system holding `path` (the longest mount point above it in /proc/mounts), or None."""
    try:
        mounts = Path("/proc/mounts").read_text(encoding="utf-8").splitlines()
    except OSError:  # not Linux: flock, with its fallback
        return None
    target, best = str(path.resolve()), (None, -1)
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best[1]:
            best = (fields[2], len(point))
    return best[0]


def lock_kind(folder: Path) -> str:
    """ "flock" or "file" for a lock in `folder`: UNSLOTH_SFT_LOCK, else by the file system it is on."""
    chosen = os.environ.get(LOCK_ENV, "auto").strip().lower() or "auto"
    if chosen not in ("auto", "flock", "file"):
        raise RunError(f"{LOCK_ENV}={chosen!r}: expected flock, file or auto (the default)")
    if chosen != "auto":
        return chosen
    fs = file_system(folder) or ""
    return "file" if fs.startswith("fuse") or fs in NETWORK_FS else "flock"


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
        self.fd: int | None = None  # the flock'd file
        self.kind: str | None = None  # "flock" or "file" while held
        self.info: dict | None = None  # what this lock wrote into its file

    def acquire(self) -> RunLock:
        held = _HELD.get(str(self.path.absolute()))
        if held is not None:  # this very process holds it (an earlier cell's run): take it over
            held.release()
        self.info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv[:3]),
            "since": time.time(),
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            kind = lock_kind(self.path.parent)
            fd = self._flock() if kind == "flock" else None
            if fd is None:
                kind, fd = "file", self._exclusive_file()  # flock is not supported here: the lock file itself
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({**self.info, "kind": kind}).encode())
            if kind == "file":  # the file is the lock: written through, and not kept open
                os.fsync(fd)
                os.close(fd)
            else:
                self.fd = fd
        except OSError as err:
            if write_problem(err) is None:
                raise
            raise cannot_write(self.run_dir, err) from None
        self.kind = kind
        _HELD[str(self.path.absolute())] = self
        return self

    def _flock(self) -> int | None:
        """The OS lock's open file; None when this file system has none (a file this call created is removed)."""
        while True:
            existed = self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunError(f"{self.run_dir} is in use by {holder_text(self.path)}: {self.fix}") from None
            except OSError as err:
                os.close(fd)
                if err.errno not in NO_FLOCK:
                    raise
                if not existed:
                    with contextlib.suppress(OSError):
                        os.unlink(self.path)
                return None
            if os.path.exists(self.path) and os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                return fd
            os.close(fd)  # the holder removed the file as we opened it: try the new one

    def _exclusive_file(self) -> int:
        """The lock file, created exclusively (open, empty); a stale one (its pid gone, on this host) is taken over."""
        for _ in range(5):
            try:
                return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if not self._take_over_stale():
                    time.sleep(0.2)  # another process is taking a stale lock over, or has just created its file
        raise RunError(f"{self.run_dir} is in use by {holder_text(self.path)}: {self.fix}")

    def _take_over_stale(self) -> bool:
        """True when the existing lock file was stale and is gone; refuses a live holder, and another host's."""
        info = holder(self.path)
        if info is None:  # being written this instant (a few bytes), or empty: look again before judging
            time.sleep(0.2)
            info = holder(self.path)
        if info is None:
            if not self.path.exists():
                return True
            raise RunError(
                f"{self.run_dir}: its lock file {self.path} names no holder (empty or damaged); if no process "
                f"writes {self.run_dir}, delete {self.path} and run again"
            )
        pid, host = info.get("pid"), info.get("host")
        if host != socket.gethostname():
            raise RunError(
                f"{self.run_dir} is in use by {holder_text(self.path)}, another machine, and this file system "
                f"cannot tell whether it still runs: {self.fix}; if that runtime is gone (a Colab disconnect), "
                f"delete {self.path} and run again"
            )
        if isinstance(pid, int) and pid > 0 and pid != os.getpid() and pid_alive(pid):
            raise RunError(f"{self.run_dir} is in use by {holder_text(self.path)}: {self.fix}")
        guard = self.path.with_name(self.path.name + ".takeover")  # one taker at a time: a second waits
        try:
            gfd = os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - guard.stat().st_mtime > GUARD_STALE_S:
                    guard.unlink()
            return False
        try:
            if holder(self.path) == info:  # still the dead holder's file, not a new holder's
                os.unlink(self.path)
                print(f"note: {self.path} was left by pid {pid} on {host}, which is no longer running; taking it over")
        finally:
            os.close(gfd)
            guard.unlink(missing_ok=True)
        return True

    def release(self) -> None:
        if self.kind is None:
            return
        if self.kind == "file":
            if holder(self.path) == {**self.info, "kind": "file"}:  # never another holder's file
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
        else:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # first, while still holding it: nobody can take a file that is about to go
            os.close(self.fd)
            self.fd = None
        self.kind = None
        _HELD.pop(str(self.path.absolute()), None)

    @property
    def held(self) -> bool:
        return self.kind is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def locked(run_dir: str | os.PathLike) -> RunLock:
    """The run folder's lock, to hold for a `with` block (eval --run, export)."""
    return RunLock(run_dir)
