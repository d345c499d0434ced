"""The CPU process settings a training run wants before torch loads: glibc malloc's and the thread count.

A CPU training step frees and re-allocates the same large activation buffers every step; glibc serves each from a
fresh mmap and returns it on free, so every step page-faults its working set in again (~90k faults a step for
Gemma-3 270M, STACK.md). Keeping freed memory in the heap (no mmap, no trim) measured +6 % tokens/s on an Intel
Xeon with AMX, but on an fp32 Intel Xeon (AVX-512, no bf16 units; 2026-12-08, the Gemma-3 recipe, 8 steps) it
raised the training peak RSS from 2.3 to 4.4 GiB with no gain in speed (163 vs 129 tokens/s, within noise), so it is
opt-in: `UNSLOTH_SFT_MALLOC=1`. The settings are glibc's own `mallopt` parameters, applied to this process at once
(`mallopt`, so no re-exec is needed) and exported as their MALLOC_* variables for child processes. The thread
count is always set. Call `tune_cpu()` first thing: the CLI's `main` does, and the notebooks' first cell can.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import MutableMapping
from pathlib import Path

# glibc's environment names (note the trailing underscore), their values and mallopt's parameter numbers
MALLOC = {
    "MALLOC_MMAP_MAX_": (0, -4),  # M_MMAP_MAX: large blocks from the heap, not a fresh mmap each time
    "MALLOC_TRIM_THRESHOLD_": (2**31 - 1, -1),  # M_TRIM_THRESHOLD: keep freed heap (reused); mallopt's int maximum
    "MALLOC_TOP_PAD_": (256 * 2**20, -2),  # M_TOP_PAD: grow the heap 256 MiB at a time
}
OFF = "UNSLOTH_SFT_MALLOC"  # =1: apply MALLOC (more resident memory); unset or 0: glibc's defaults


def has_gpu() -> bool:
    """Whether an NVIDIA or AMD GPU device is present, without importing torch (the allocator is set before it)."""
    if "torch" in sys.modules:
        return sys.modules["torch"].cuda.is_available()
    return any(Path(p).exists() for p in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd"))


def threads(environ: MutableMapping[str, str] | None = None) -> int:
    """Torch threads for this process: the cores it may run on (its affinity mask, not the machine's count), shared
    by the processes of a local distributed launch."""
    environ = os.environ if environ is None else environ
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, int(environ.get("LOCAL_WORLD_SIZE", "1") or 1)))


def tune_cpu(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """On a machine without a GPU: OMP_NUM_THREADS from the cores this process may use, and with
    UNSLOTH_SFT_MALLOC=1 glibc malloc settings (this process and its children). The user's own variables win. Returns what was set, for environment.json."""
    environ = os.environ if environ is None else environ
    if has_gpu():
        return {}
    applied: dict[str, str] = {}
    if "OMP_NUM_THREADS" not in environ:
        environ["OMP_NUM_THREADS"] = applied["OMP_NUM_THREADS"] = str(threads(environ))
    if "torch" in sys.modules:  # loaded already (a notebook kernel that imported it): set its pool too
        sys.modules["torch"].set_num_threads(int(environ["OMP_NUM_THREADS"]))
    if environ.get(OFF) != "1" or platform.libc_ver()[0] != "glibc":
        return applied
    libc = _libc()
    for var, (value, param) in MALLOC.items():
        if var in environ:
            continue
        if libc is not None and libc.mallopt(param, value) == 1:  # mallopt returns 1 on success
            environ[var] = applied[var] = str(value)
    return applied


def settings(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """The allocator and thread variables this process runs with (for environment.json and benchmark results)."""
    environ = os.environ if environ is None else environ
    return {var: environ[var] for var in (*MALLOC, "OMP_NUM_THREADS", OFF) if var in environ}


def _libc():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
