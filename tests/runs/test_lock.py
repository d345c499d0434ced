"""One writer per run folder (runs.lock): a second process is refused naming the holder; a killed holder blocks
nobody; a process that locks its own folder again takes its lock back (a notebook rerunning a cell)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from unsloth_sft.core.errors import RunError
from unsloth_sft.runs.lock import RunLock, lock_path


def hold(run_dir):
    code = (
        "import sys, time; from unsloth_sft.runs.lock import RunLock; "
        f"RunLock({str(run_dir)!r}).acquire(); print('held', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_and_a_killed_holder_blocks_nobody(tmp_path):
    run = tmp_path / "runs" / "r"
    holder = hold(run)
    try:
        with pytest.raises(RunError, match=rf"{run} is in use by pid {holder.pid} on .* since "):
            RunLock(run).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunLock(run).acquire()  # the OS lock died with its process
    assert lock.held and lock_path(run).is_file() and str(lock_path(run)) == str(tmp_path / "runs" / ".r.lock")
    lock.release()
    assert not lock_path(run).exists()


def test_the_same_process_takes_its_own_lock_back(tmp_path):
    first = RunLock(tmp_path / "r").acquire()
    second = RunLock(tmp_path / "r").acquire()  # e.g. the notebook's config cell run again after an error
    assert second.held and not first.held
    second.release()
    assert not lock_path(tmp_path / "r").exists()


def test_another_folder_kind_names_its_own_lock_file_and_fix(tmp_path):
    """A sweep folder's lock: a file inside it, the same refusal naming the holder, with the fix that fits."""
    folder = tmp_path / "s"
    code = (
        "import time; from unsloth_sft.studies.sweep import sweep_lock; "
        f"sweep_lock(__import__('pathlib').Path({str(folder)!r})).acquire(); print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held" and (folder / ".sweep.lock").is_file()
        with pytest.raises(RunError, match=rf"{folder} is in use by pid {holder.pid} .*choose another --out$"):
            RunLock(folder, folder / ".sweep.lock", "wait for it, or choose another --out").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock(folder, folder / ".sweep.lock") as lock:  # a context manager too; the killed holder blocks nobody
        assert lock.held
    assert not lock.held and not (folder / ".sweep.lock").exists()
