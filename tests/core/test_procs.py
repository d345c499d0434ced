"""Child processes tied to their parent (core.procs): killed with it, even by SIGKILL, and on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unsloth_sft.core import procs


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.is_file() and "State:\tZ" in status.read_text())  # a zombie has died


def test_run_returns_what_the_child_did():
    done = procs.run([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"], capture_output=True, text=True)
    assert done.returncode == 3 and done.stdout == "out\n" and done.args[0] == sys.executable


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_dies_when_its_parent_is_killed(tmp_path):
    """A parent that runs a long child through procs.run is SIGKILLed: the kernel kills the child too."""
    pidfile = tmp_path / "child.pid"
    child_code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    script = tmp_path / "parent.py"
    script.write_text(
        f"import sys\nfrom unsloth_sft.core import procs\nprocs.run([sys.executable, '-c', {child_code!r}])\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)])
    deadline = time.time() + 60
    while not (pidfile.is_file() and pidfile.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    child = int(pidfile.read_text())
    assert alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_sigterm_runs_cleanup_as_ctrl_c_does():
    with pytest.raises(KeyboardInterrupt), procs.terminate_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # put back as it was
