"""The GPU benchmark's CPU-runnable parts (bench.gpu, bench.gpu_worker): arguments, the plan, requirement checks,
MFU, the comparison table, out-of-memory detection, and bisection with real training steps on the tiny model."""

from __future__ import annotations

import importlib.util

import pytest

from bench import common, gpu, gpu_worker
from tests.conftest import load_model

# ---------------------------------------------------------------- arguments


def test_gpu_args():
    args = gpu.parse_args([])
    assert args.models == ["2b", "9b"] and args.backends == ["unsloth", "transformers"]
    assert (args.seq_len, args.batch, args.grad_accum, args.lora_r, args.optim) == (2048, 2, 4, 16, "adamw_8bit")
    assert not args.bisect
    args = gpu.parse_args(["--models", "9B", "--backends", "transformers", "--bisect", "--peak-tflops", "500"])
    assert args.models == ["9b"] and args.backends == ["transformers"] and args.bisect and args.peak_tflops == 500


@pytest.mark.parametrize(
    "argv",
    [
        ["--models", "7b"],
        ["--backends", "vllm"],
        ["--seq-len", "0"],
        ["--bisect-lo", "4096", "--bisect-hi", "1024"],
        ["--peak-tflops", "-1"],
    ],
)
def test_gpu_args_refuse_bad_values(argv):
    with pytest.raises(SystemExit) as err:
        gpu.parse_args(argv)
    assert err.value.code == 2


def test_gpu_flags_round_trip_to_workers():
    args = gpu.parse_args(["--seq-len", "1024", "--bisect", "--bisect-hi", "8192", "--optim", "adamw_torch"])
    again = gpu.parse_args(["--worker", "--models", "2b", "--backends", "unsloth", *gpu.common_flags(args)])
    for name in ("seq_len", "batch", "grad_accum", "lora_r", "optim", "steps", "warmup_steps", "bisect", "bisect_hi"):
        assert getattr(again, name) == getattr(args, name)


# ---------------------------------------------------------------- plan, numbers and tables


def test_gpu_plan_lists_each_model():
    rows = gpu.plan(gpu.parse_args(["--models", "2b"]))
    assert rows == [
        {
            "model": "gemma2-2b",
            "params": 2_614_341_888,
            "layers": 26,
            "hidden": 2304,
            "backends": "unsloth, transformers",
            "seq_len": 2048,
            "tokens_per_step": 16384,
        }
    ]


def test_mfu_peak_flops_and_names():
    assert gpu_worker.mfu(9_000_000_000, 1000.0, 989e12) == pytest.approx(6 * 9e9 * 1000 / 989e12)
    assert gpu_worker.mfu(1, 1.0, None) is None
    assert gpu_worker.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_worker.peak_flops("NVIDIA H200") == 989e12
    assert gpu_worker.peak_flops("Some Future GPU") is None
    assert gpu_worker.peak_flops("Some Future GPU", 123.0) == 123e12
    assert gpu.gpu_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"


def test_gpu_compare_and_markdown():
    rows = [
        {"model": "gemma2-9b", "backend": "unsloth", "tokens_per_s": 3000.0, "peak_reserved_gb": 10.0, "mfu": 0.17},
        {
            "model": "gemma2-9b",
            "backend": "transformers",
            "tokens_per_s": 1500.0,
            "peak_reserved_gb": 25.0,
            "mfu": 0.08,
        },
    ]
    verdict = gpu.compare(rows)
    assert verdict == {
        "speedup_9b": 2.0,
        "speedup_met": True,
        "vram_ratio_9b": 0.4,
        "vram_met": True,
        "mfu_9b_unsloth": 0.17,
    }
    md = gpu.render_markdown(
        {
            "gpu": "NVIDIA H100",
            "command": "python -m bench.gpu",
            "rows": rows,
            "targets": verdict,
            "settings": {"seq_len": 2048, "batch": 2, "grad_accum": 4, "lora_r": 16, "optim": "adamw_8bit"},
        }
    )
    assert "| gemma2-9b | unsloth | 3,000 | 2.00 | 10.00 | 0.40 | 17.0 | - |" in md
    assert "2.0x the transformers backend's tokens/s (target >= 1.9: met)" in md


# ---------------------------------------------------------------- requirement check


def test_requirements_message_names_missing_packages(monkeypatch):
    real = importlib.util.find_spec
    gone = {"bitsandbytes", "unsloth", "trl"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in gone else real(name, *a))
    message = gpu.check_requirements(["unsloth", "transformers"])
    assert message.startswith("missing packages: trl, bitsandbytes, unsloth.")
    assert "bitsandbytes==0.50.2 (41.1 MB wheel" in message and "pip install --no-deps" in message
    assert "unsloth==2026.10.9" in message
    message = gpu.check_requirements(["transformers"])  # the transformers backend does not need unsloth
    assert "unsloth" not in message and "trl" in message


def test_requirements_pass_when_everything_is_installed(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert gpu.check_requirements(["unsloth", "transformers"]) is None


def test_gpu_main_refuses_with_missing_packages(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a))
    assert gpu.main(["--backends", "transformers"]) == 2
    assert "missing packages: datasets" in capsys.readouterr().err


# ---------------------------------------------------------------- out of memory and bisection


def test_is_oom():
    import torch

    assert gpu_worker.is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert gpu_worker.is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"))
    assert not gpu_worker.is_oom(RuntimeError("shape mismatch"))
    assert not gpu_worker.is_oom(ValueError("out of memory"))


@pytest.fixture
def one_thread():
    """One torch thread: on 2 shared cores, 2 OpenMP threads make the tiny model's matmuls ~20x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_bisection_on_a_tiny_model_on_cpu(tmp_path, tiny_path, one_thread):
    """Real training steps on the tiny model; sequences longer than 70 tokens 'run out of memory'."""
    import torch

    args = gpu.parse_args(
        [
            "--batch",
            "2",
            "--grad-accum",
            "1",
            "--lora-r",
            "4",
            "--optim",
            "adamw_torch",
            "--steps",
            "1",
            "--warmup-steps",
            "0",
        ]
    )
    cfg = gpu_worker.bench_config(tiny_path, "transformers", 256, args, tmp_path, load_in_4bit=False)
    loaded = load_model(cfg)
    timer = gpu_worker.train_steps(loaded, cfg, 32, steps=2)
    assert len(timer.times) == 2 and all(t > 0 for t in timer.times)

    limit = {"n": 70, "error": torch.OutOfMemoryError}

    def fake_oom(module, inputs):
        if inputs[0].shape[-1] > limit["n"]:
            raise limit["error"]("CUDA out of memory (simulated)")

    hook = loaded.model.get_input_embeddings().register_forward_pre_hook(fake_oom)
    try:
        assert common.longest_trainable(lambda n: gpu_worker.fits(loaded, cfg, n), 16, 128, 16) == 64
        assert all(p.grad is None for p in loaded.model.parameters())  # a failed try leaves no gradients behind
        limit["error"] = ValueError  # anything but out-of-memory is a real error, not a "no"
        with pytest.raises(ValueError):
            gpu_worker.fits(loaded, cfg, 200)
    finally:
        hook.remove()
