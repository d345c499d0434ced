"""What the CPU can do, read from the operating system: its model name and the flags that decide the fast compute
dtype (AMX-BF16 and AVX512-BF16 make bf16 matmuls several times faster than fp32; plain AVX2 does not)."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # the units that make bf16 matmul fast on x86
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # what a figure or a report names


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict:
    """{"model": "AMD EPYC ...", "flags": [...], "cores": N}: /proc/cpuinfo on Linux, platform elsewhere."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "flags": sorted(flags & set(SHOWN_FLAGS)), "all_flags": sorted(flags), "cores": cores}


def has_bf16_units(flags: list[str] | None = None) -> bool:
    """True when the CPU has bf16 matmul units (AMX-BF16 or AVX512-BF16); `flags` fakes the CPU in tests."""
    flags = cpu_info()["all_flags"] if flags is None else flags
    return any(f in flags for f in BF16_FLAGS)


def cpu_compute_dtype(flags: list[str] | None = None) -> str:
    """The dtype a CPU trains fastest in: "bfloat16" with AMX-BF16 or AVX512-BF16 (a bf16 matmul peaks at 5-7x fp32
    there), else "float32" (AVX2 or plain AVX-512 emulate bf16, slower than fp32); `flags` fakes the CPU in tests."""
    return "bfloat16" if has_bf16_units(flags) else "float32"


def dtype_reason(flags: list[str] | None = None) -> str:
    """Why `cpu_compute_dtype` chose what it did: the bf16 units found, or that there are none."""
    flags = cpu_info()["all_flags"] if flags is None else flags
    found = [f for f in BF16_FLAGS if f in flags]
    return f"CPU has {' '.join(found)}" if found else "no AMX-BF16 or AVX512-BF16 on this CPU: bf16 would be emulated"


def describe() -> str:
    """One line for figures and reports: "AMD EPYC, 2 cores, avx2 avx512_bf16"."""
    info = cpu_info()
    return f"{info['model']}, {info['cores']} cores, {' '.join(info['flags']) or 'no AVX2'}"
