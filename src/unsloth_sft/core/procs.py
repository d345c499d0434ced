"""Child processes that never outlive the command that started them (llama.cpp's converter and quantizer, the
tiny model's build, a sweep's trials): on Linux the kernel kills a child when its parent dies, even by SIGKILL
(prctl PR_SET_PDEATHSIG); on Ctrl-C, SIGTERM or an error the parent kills and reaps it before raising on."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

# The child first asks the kernel for SIGKILL when its parent dies, checks the parent is still the one that started
# it (it may have died in between), then becomes the real command (execvp keeps the request). A shim rather than
# Popen's preexec_fn, which is unsafe with threads (a sweep starts its trials from a thread pool).
SHIM = (
    "import ctypes, ctypes.util, os, signal, sys; "
    "ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').prctl(1, signal.SIGKILL); "
    "os.getppid() == int(sys.argv[1]) or sys.exit(130); "
    "os.execvp(sys.argv[2], sys.argv[2:])"
)


def tied(cmd: list[str]) -> list[str]:
    """`cmd` wrapped so that the kernel kills it when this process dies (Linux; elsewhere `cmd` as it is)."""
    if not sys.platform.startswith("linux"):
        return list(cmd)
    return [sys.executable, "-c", SHIM, str(os.getpid()), *map(str, cmd)]


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run, with the child tied to this process: it dies when we die, and is killed if we stop waiting."""
    with subprocess.Popen(tied(cmd), **_pipes(kwargs)) as proc:
        try:
            out, err = proc.communicate()
        except BaseException:  # KeyboardInterrupt, SIGTERM (see terminate_as_interrupt), an error: the child goes too
            proc.kill()
            proc.wait()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _pipes(kwargs: dict) -> dict:
    if kwargs.pop("capture_output", False):
        kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return kwargs


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a `kill`, a job scheduler) raises KeyboardInterrupt meanwhile, so every `finally` and cleanup runs
    as on Ctrl-C: temporary files are removed, children killed, the run lock released."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave the signal alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
