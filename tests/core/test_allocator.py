"""core/allocator.py: glibc malloc settings and the thread count, set once for a CPU run; the user's own settings win,
a GPU machine is left alone, and a fresh process really runs with them (mallopt, exported for children)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from unsloth_sft.core import allocator


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(allocator, "has_gpu", lambda: False)


def test_sets_threads_from_the_affinity_and_malloc_only_when_asked(cpu_only):
    plain: dict[str, str] = {}
    assert set(allocator.tune_cpu(plain)) == {"OMP_NUM_THREADS"} and "MALLOC_MMAP_MAX_" not in plain
    environ: dict[str, str] = {allocator.OFF: "1"}
    applied = allocator.tune_cpu(environ)
    cores = len(os.sched_getaffinity(0))
    assert environ["OMP_NUM_THREADS"] == str(cores) == applied["OMP_NUM_THREADS"]
    assert environ["MALLOC_MMAP_MAX_"] == "0" and int(environ["MALLOC_TRIM_THRESHOLD_"]) >= 2**30
    assert environ["MALLOC_TOP_PAD_"] == str(256 * 2**20)
    assert allocator.settings(environ) == environ


def test_the_users_own_settings_win(cpu_only):
    environ = {"OMP_NUM_THREADS": "7", "MALLOC_MMAP_MAX_": "65536", allocator.OFF: "1"}
    applied = allocator.tune_cpu(environ)
    assert environ["OMP_NUM_THREADS"] == "7" and environ["MALLOC_MMAP_MAX_"] == "65536"
    assert "OMP_NUM_THREADS" not in applied and "MALLOC_MMAP_MAX_" not in applied
    off = {allocator.OFF: "0"}
    assert set(allocator.tune_cpu(off)) == {"OMP_NUM_THREADS"} and "MALLOC_TOP_PAD_" not in off


def test_a_local_launch_shares_the_cores():
    cores = len(os.sched_getaffinity(0))
    assert allocator.threads({"LOCAL_WORLD_SIZE": "2"}) == max(1, cores // 2)
    assert allocator.threads({"LOCAL_WORLD_SIZE": str(cores * 4)}) == 1


def test_a_gpu_machine_is_left_alone(monkeypatch):
    monkeypatch.setattr(allocator, "has_gpu", lambda: True)
    environ: dict[str, str] = {}
    assert allocator.tune_cpu(environ) == {} and environ == {}


CHILD = """
import json, os, sys
from unsloth_sft.app.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
import torch
print(json.dumps({"env": {k: os.environ.get(k) for k in ("MALLOC_MMAP_MAX_", "OMP_NUM_THREADS")},
                  "threads": torch.get_num_threads()}))
"""


@pytest.mark.skipif(allocator.has_gpu(), reason="the CLI leaves a GPU machine's allocator alone")
def test_the_cli_sets_them_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "OMP_NUM_THREADS"}
    env[allocator.OFF] = "1"
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    cores = len(os.sched_getaffinity(0))
    assert got == {"env": {"MALLOC_MMAP_MAX_": "0", "OMP_NUM_THREADS": str(cores)}, "threads": cores}
