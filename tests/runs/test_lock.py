"""One writer per run folder (runs.lock): a second process is refused naming the holder; a killed holder blocks
nobody; a process that locks its own folder again takes its lock back (a notebook rerunning a cell)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

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


# Where flock does not work (Google Drive's FUSE mount, NFS without lockd, SMB): the lock file itself, created
# exclusively, holding host and pid. Forced here by a flock that fails as those file systems make it fail.


@pytest.fixture
def no_flock(monkeypatch):
    """fcntl.flock raising ENOLCK, as on a file system without locks; the calls are counted."""
    import errno

    from unsloth_sft.runs import lock as lock_module

    calls = []

    def failing(fd, op):
        calls.append(op)
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_module.fcntl, "flock", failing)
    monkeypatch.delenv("UNSLOTH_SFT_LOCK", raising=False)
    return calls


def hold_file_lock(run_dir):
    """A process holding the exclusive-file lock (UNSLOTH_SFT_LOCK=file: a patched flock does not cross processes)."""
    import os

    code = (
        "import time; from unsloth_sft.runs.lock import RunLock; "
        f"print(RunLock({str(run_dir)!r}).acquire().kind, flush=True); time.sleep(600)"
    )
    env = {**os.environ, "UNSLOTH_SFT_LOCK": "file"}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "file"
    return proc


def test_where_flock_fails_the_lock_file_is_created_exclusively_with_host_and_pid(tmp_path, no_flock):
    import json
    import os
    import socket

    run = tmp_path / "r"
    lock = RunLock(run).acquire()
    assert no_flock and lock.kind == "file" and lock.fd is None
    info = json.loads(lock_path(run).read_text())
    assert (info["pid"], info["host"], info["kind"]) == (os.getpid(), socket.gethostname(), "file")
    again = RunLock(run).acquire()  # the same process (a notebook cell run again) takes its own lock back
    assert again.held and not lock.held
    again.release()
    assert not lock_path(run).exists()


def test_a_live_holder_of_the_lock_file_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path, no_flock, capsys):
    run = tmp_path / "runs" / "r"
    holder = hold_file_lock(run)
    try:
        with pytest.raises(RunError, match=rf"{run} is in use by pid {holder.pid} on .*choose another run_name$"):
            RunLock(run).acquire()
        assert lock_path(run).is_file()  # the refused process left the holder's file alone
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(run).is_file()  # an exclusive file does not die with its process
    lock = RunLock(run).acquire()  # same host, pid gone: stale, taken over with one line
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and f"left by pid {holder.pid} on " in out and "taking it over" in out
    assert lock.kind == "file" and not lock_path(run).with_name(".r.lock.takeover").exists()
    lock.release()
    assert not lock_path(run).exists()


def test_a_lock_file_of_another_host_is_refused_naming_it_and_how_to_clear_it(tmp_path, no_flock):
    import json
    import time

    run = tmp_path / "r"
    stale = {"pid": 4242, "host": "colab-runtime-7f3a", "command": "unsloth-sft train p.yaml", "since": time.time()}
    lock_path(run).write_text(json.dumps(stale))
    with pytest.raises(RunError) as refused:
        RunLock(run).acquire()
    message = str(refused.value)
    assert "pid 4242 on colab-runtime-7f3a (unsloth-sft train p.yaml" in message
    assert message.endswith(f"delete {lock_path(run)} and run again")
    assert json.loads(lock_path(run).read_text()) == stale  # never removed on a guess


def test_an_empty_lock_file_is_refused_with_how_to_clear_it(tmp_path, no_flock):
    run = tmp_path / "r"
    lock_path(run).write_text("")
    with pytest.raises(RunError, match=rf"names no holder .*delete {lock_path(run)} and run again$"):
        RunLock(run).acquire()


def test_release_leaves_a_lock_file_that_another_holder_wrote(tmp_path, no_flock):
    """Someone cleared a lock by hand and another process took it: releasing the old lock must not remove theirs."""
    import json

    run = tmp_path / "r"
    lock = RunLock(run).acquire()
    lock_path(run).write_text(json.dumps({"pid": 1, "host": "elsewhere", "kind": "file"}))
    lock.release()
    assert not lock.held and json.loads(lock_path(run).read_text())["host"] == "elsewhere"


def test_a_network_or_fuse_file_system_gets_the_lock_file_without_trying_flock(tmp_path, no_flock, monkeypatch):
    from unsloth_sft.runs import lock as lock_module

    assert lock_module.file_system(Path("/proc")) == "proc"  # read from /proc/mounts
    monkeypatch.setattr(lock_module, "file_system", lambda path: "fuse.drive")  # Colab's Drive mount
    with RunLock(tmp_path / "r") as lock:
        assert lock.kind == "file" and no_flock == []
    monkeypatch.setattr(lock_module, "file_system", lambda path: "ext4")
    monkeypatch.setenv("UNSLOTH_SFT_LOCK", "file")  # forced, on any file system
    with RunLock(tmp_path / "r") as lock:
        assert lock.kind == "file" and no_flock == []


def test_the_lock_kind_setting_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("UNSLOTH_SFT_LOCK", "nfs")
    with pytest.raises(RunError, match="UNSLOTH_SFT_LOCK='nfs': expected flock, file or auto"):
        RunLock(tmp_path / "r").acquire()
    monkeypatch.setenv("UNSLOTH_SFT_LOCK", "flock")
    with RunLock(tmp_path / "r") as lock:
        assert lock.kind == "flock" and lock.fd is not None
