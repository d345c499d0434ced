"""The run folder: what a finished run looks like, atomic writes, checkpoints to resume from."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from unsloth_sft.errors import RunError

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FINISHED_MARK = "metrics.json"  # written last, atomically: its presence means the run finished
CHECKPOINTS = "checkpoints"


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / FINISHED_MARK).is_file()


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose trainer_state.json was written (transformers writes it last)."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return None
    found = []
    for child in folder.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", child.name)
        if m and (child / "trainer_state.json").is_file():
            found.append((int(m.group(1)), child))
    return max(found)[1] if found else None


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse a finished run (unless overwrite) or a place that cannot hold a folder; creates nothing."""
    run_dir = Path(run_dir)
    if is_finished(run_dir) and not overwrite:
        raise RunError(
            f"{run_dir} holds a finished run; set overwrite: true (or --set overwrite=true) to replace it, "
            "or choose another run_name"
        )
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "a file is in the way" if existing.exists() and not existing.is_dir() else "not writable"
        raise RunError(f"{run_dir}: cannot write here ({why}: {existing}); choose a writable output_dir")


def prepare_run_dir(run_dir: Path, overwrite: bool, resume: str) -> Path | None:
    """Make the run folder; refuse a finished run unless overwrite; return the checkpoint to resume from."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir, overwrite)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise RunError(f"{run_dir}: cannot write here ({err.strerror}); choose a writable output_dir") from None
    if overwrite and is_finished(run_dir):
        shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)  # a fresh run must not resume the old one
        return None
    if resume == "never":
        return None
    if resume != "auto":
        path = Path(resume)
        if not (path / "trainer_state.json").is_file():
            raise RunError(f"train.resume '{resume}': not a complete checkpoint (no trainer_state.json)")
        return path
    return latest_checkpoint(run_dir)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `target` in one rename, on failure it vanishes."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; a model folder should read like any other
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
