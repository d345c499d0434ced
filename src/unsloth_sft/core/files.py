"""Atomic writes: a file or a folder appears whole under its name, or not at all (a crash leaves no half).

Every writer of a run folder, a cache or a sweep folder goes through these; nothing else renames into place.
A temporary file or folder is a hidden sibling of its target (`.NAME.tmp-*`), so the rename never crosses a disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it becomes `target` in one rename, on failure it vanishes.

    replace=False keeps a `target` that appeared meanwhile (a cache another process filled first) and drops ours.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; a model folder should read like any other
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists() and not replace:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    move_dir_into_place(tmp, target)


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
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
