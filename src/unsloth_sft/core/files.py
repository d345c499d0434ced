"""Atomic writes: a file or a folder appears whole under its name, or not at all (a crash leaves no half).

Every writer of a run folder, a cache or a sweep folder goes through these; nothing else renames into place.
A temporary file or folder is a hidden sibling of its target named after the process that writes it
(`.NAME.tmp-PID-*`), so the rename never crosses a disk and `remove_leftovers` can tell a dead writer's remains
from a live one's. A full disk, a quota or a read-only folder becomes one `RunError` line naming the target.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unsloth_sft.core.errors import ConfigError, RunError

# errno values that mean "this place cannot take the write": a fix on the user's side, not a bug
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST}
# the same, as other libraries word it when they write themselves (torch's, safetensors' and tokenizers' writers)
FULL_DISK_WORDS = ("No space left on device", "StorageFull", "Disk quota exceeded", "file write failed")
LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:tmp-(?P<pid>\d+)-.*|old)$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_problem(err: BaseException) -> str | None:
    """Why a write failed, when it is the place's fault (full disk, quota, read-only, a file in the way), else None."""
    if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
        return err.strerror or os.strerror(err.errno)
    text = str(err)
    return next((w for w in FULL_DISK_WORDS if w in text), None)


def cannot_write(target: str | os.PathLike, err: BaseException) -> RunError:
    why = write_problem(err) or str(err)
    hint = (
        "free some space"
        if "space" in why or "quota" in why.lower() or "write failed" in why
        else "fix the permissions"
    )
    return RunError(f"{target}: cannot write ({why}); {hint}, or choose another output_dir (nothing was half-written)")


@contextlib.contextmanager
def writing(target: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk or an unwritable place inside the block into one RunError line naming `target`."""
    try:
        yield
    except Exception as err:  # OSError, and the writers' own types: torch's RuntimeError, SafetensorError ...
        if isinstance(err, RunError) or write_problem(err) is None:
            raise
        raise cannot_write(target, err) from None


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-{os.getpid()}-"


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it becomes `target` in one rename, on failure it vanishes.

    replace=False keeps a `target` that appeared meanwhile (a cache another process filled first) and drops ours.
    """
    target = Path(target)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; a model folder should read like any other
    try:
        with writing(target):
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists() and not replace:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    move_dir_into_place(tmp, target)


@contextlib.contextmanager
def scratch_dir(beside: str | os.PathLike) -> Iterator[Path]:
    """A work folder beside `beside` (`.NAME.tmp-PID-work-*`, on the same disk, never in /tmp), removed on every
    exit; a kill leaves it to `remove_leftovers`."""
    beside = Path(beside)
    with writing(beside):
        beside.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{_temp_prefix(beside)}work-", dir=beside.parent))
    try:
        with writing(beside):
            yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def move_dir_into_place(source: Path, target: Path) -> None:
    """Rename a finished folder to `target`, replacing an older one (set aside first, deleted after the rename)."""
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    source.rename(target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that wants a file name (savefig, copyfile, a library's
    save); on success it is renamed over `path`, on failure it is removed. The suffix is kept (savefig reads it)."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with writing(path):
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to a temporary file beside `path`, then rename it over `path`."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """A JSON file's content, or None when there is no such file."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def check_writable(folder: str | os.PathLike, create: bool = False) -> None:
    """The folder takes a write (a probe file made and removed): a RunError line now, not after minutes of work."""
    folder = Path(folder)
    with writing(folder):
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".write-test.tmp-{os.getpid()}-", dir=folder)
        os.close(fd)
        os.unlink(probe)


def check_output(source: str | os.PathLike, output: str | os.PathLike, flag: str, what: str, fix: str) -> None:
    """An output goes to a new place: never over its `source` (the same path, or the same file by another path or
    a link, which the writer would truncate before reading it), never below a file; checked before any work."""
    source, output = Path(source), Path(output)
    if output.resolve() == source.resolve() or (
        output.exists() and source.exists() and os.path.samefile(output, source)
    ):
        raise ConfigError(f"{flag} {output} is {what}; {fix}")
    parent = output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise RunError(f"{flag} {output}: {parent} is a file, not a folder; choose another output path")
    if output.is_dir():
        raise RunError(f"{flag} {output} is a folder; name a file, e.g. {output / ('out' + source.suffix)}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove_leftovers(folder: str | os.PathLike) -> list[str]:
    """Remove what a killed writer left in `folder`: temporary files and folders of processes that are gone, and
    a `.NAME.old` whose replacement made it into place; a `.NAME.old` whose replacement did not is put back as
    NAME. Returns one note per thing done (the caller says them)."""
    folder = Path(folder)
    notes: list[str] = []
    if not folder.is_dir():
        return notes
    for child in sorted(folder.iterdir()):
        m = LEFTOVER.match(child.name)
        if m is None:
            continue
        if m["pid"] is not None:
            if int(m["pid"]) == os.getpid() or pid_alive(int(m["pid"])):
                continue  # a live writer's (another process filling a cache now)
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
            notes.append(f"removed {child} (left by an interrupted write)")
        elif (folder / m["name"]).exists():
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
            notes.append(f"removed {child} (an older copy a finished write replaced)")
        else:
            child.rename(folder / m["name"])
            notes.append(f"restored {folder / m['name']} from {child.name} (its replacement was interrupted)")
    return notes
