"""The CPU-runnable parts of bench/: argument handling, model shapes, bisection, tables, requirement checks, and
every CPU variant starting through the library's own options."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import cpu  # noqa: E402
import gpu  # noqa: E402

# ---------------------------------------------------------------- arguments


def test_cpu_args_defaults_and_quick():
    args = cpu.parse_args([])
    assert args.models == ["tiny", "small"]
    assert args.variants == cpu.DEFAULT_VARIANTS
    assert args.threads == 1 and args.prep_examples == cpu.PREP_EXAMPLES
    assert cpu.examples_for("small", args) == cpu.EXAMPLES["small"]
    quick = cpu.parse_args(["--quick"])
    assert quick.models == ["tiny"] and quick.variants == cpu.QUICK_VARIANTS
    assert cpu.examples_for("tiny", quick) == cpu.QUICK_EXAMPLES["tiny"]
    assert cpu.examples_for("tiny", cpu.parse_args(["--examples", "24"])) == 24
    smoke = cpu.parse_args(["--smoke"])
    assert smoke.models == ["tiny"] and smoke.variants == list(cpu.VARIANTS)
    assert cpu.examples_for("tiny", smoke) == cpu.SMOKE_EXAMPLES == cpu.BATCH * cpu.ACCUM  # one optimizer step


def test_cpu_args_real_section():
    args = cpu.parse_args(["--real"])
    assert args.real and args.variants == list(cpu.REAL_VARIANTS) and args.real_model == cpu.REAL_MODEL
    assert (args.steps, args.warmup_steps, args.eval_examples) == (cpu.REAL_STEPS, cpu.REAL_WARMUP, 8)
    assert args.out == common.RESULTS
    smoke = cpu.parse_args(["--smoke", "--real"])
    assert smoke.real_model == cpu.SMOKE_REAL_MODEL and (smoke.steps, smoke.warmup_steps) == (1, 0)
    assert smoke.variants == list(cpu.REAL_VARIANTS)
    one = cpu.parse_args(["--real", "--variants", "trl,naive", "--real-model", "smollm2-135m-instruct", "--steps", "2"])
    assert one.variants == ["trl", "naive"] and one.real_model == "smollm2-135m-instruct" and one.steps == 2
    again = cpu.parse_args(cpu.real_worker_flags(["trl"], one))  # what a worker process is told
    assert (again.real, again.variants, again.real_model, again.steps) == (True, ["trl"], one.real_model, 2)
    assert (again.warmup_steps, again.eval_examples, again.worker) == (one.warmup_steps, one.eval_examples, True)


@pytest.mark.parametrize(
    "argv",
    [
        ["--variants", "pipeline,fast"],
        ["--models", "huge"],
        ["--examples", "4"],
        ["--threads", "0"],
        ["--real", "--variants", "pipeline-grouped"],  # a variant of the other section
        ["--real", "--steps", "0"],
        ["--real", "--warmup-steps", "-1"],
    ],
)
def test_cpu_args_refuse_bad_values(argv, capsys):
    with pytest.raises(SystemExit) as err:
        cpu.parse_args(argv)
    assert err.value.code == 2
    assert "error" in capsys.readouterr().err


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


# ---------------------------------------------------------------- model shapes


def test_gemma2_shapes_have_the_released_parameter_counts():
    assert common.count_parameters(common.gemma2_config(common.GEMMA2_2B)) == 2_614_341_888
    assert common.count_parameters(common.gemma2_config(common.GEMMA2_9B)) == 9_241_705_984


def test_small_model_is_10_to_20m_parameters():
    params = common.count_parameters(common.gemma2_config(common.SMALL_SHAPE, vocab_size=3000))
    assert 10e6 <= params <= 20e6


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


def test_build_random_model_saves_a_loadable_folder(tmp_path, tiny_path):
    from transformers import AutoConfig, AutoTokenizer

    shape = dict(
        common.SMALL_SHAPE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    path = common.build_random_model(tmp_path / "m", shape, tiny_path, dtype="bfloat16")
    config = AutoConfig.from_pretrained(path)
    assert config.hidden_size == 32 and config.vocab_size == len(AutoTokenizer.from_pretrained(path))
    assert (path / "model.safetensors").is_file()
    assert common.build_random_model(path, shape, tiny_path) == path  # built once


# ---------------------------------------------------------------- bisection


def test_bisection_finds_the_largest_passing_length():
    for limit in range(1024, 9000, 333):
        calls = []

        def try_fn(n, limit=limit, calls=calls):
            calls.append(n)
            return n <= limit

        got = common.longest_trainable(try_fn, 1024, 8192, 256)
        assert got == 1024 + (limit - 1024) // 256 * 256 if limit < 8192 else got == 8192
        assert len(calls) <= 2 + 5  # the two ends, then log2(28 steps) rounded up
        assert len(set(calls)) == len(calls)  # no length tried twice


def test_bisection_edges():
    assert common.longest_trainable(lambda n: False, 512, 4096) is None
    assert common.longest_trainable(lambda n: True, 512, 4096) == 4096
    assert common.longest_trainable(lambda n: n <= 700, 512, 512) == 512
    assert common.longest_trainable(lambda n: n <= 4000, 512, 4096, 1) == 4000
    assert common.longest_trainable(lambda n: n <= 1000, 512, 1100, 256) == 768  # hi not on the step grid
    with pytest.raises(ValueError):
        common.longest_trainable(lambda n: True, 10, 5)


def test_is_oom():
    import torch

    assert gpu.is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert gpu.is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"))
    assert not gpu.is_oom(RuntimeError("shape mismatch"))
    assert not gpu.is_oom(ValueError("out of memory"))


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

    from unsloth_sft.model import load_model

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
    cfg = gpu.bench_config(tiny_path, "transformers", 256, args, tmp_path, load_in_4bit=False)
    loaded = load_model(cfg)
    timer = gpu.train_steps(loaded, cfg, 32, steps=2)
    assert len(timer.times) == 2 and all(t > 0 for t in timer.times)

    limit = {"n": 70, "error": torch.OutOfMemoryError}

    def fake_oom(module, inputs):
        if inputs[0].shape[-1] > limit["n"]:
            raise limit["error"]("CUDA out of memory (simulated)")

    hook = loaded.model.get_input_embeddings().register_forward_pre_hook(fake_oom)
    try:
        assert common.longest_trainable(lambda n: gpu.fits(loaded, cfg, n), 16, 128, 16) == 64
        assert all(p.grad is None for p in loaded.model.parameters())  # a failed try leaves no gradients behind
        limit["error"] = ValueError  # anything but out-of-memory is a real error, not a "no"
        with pytest.raises(ValueError):
            gpu.fits(loaded, cfg, 200)
    finally:
        hook.remove()


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


# ---------------------------------------------------------------- numbers and tables


def test_mfu_peak_flops_and_names():
    assert gpu.mfu(9_000_000_000, 1000.0, 989e12) == pytest.approx(6 * 9e9 * 1000 / 989e12)
    assert gpu.mfu(1, 1.0, None) is None
    assert gpu.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu.peak_flops("NVIDIA H200") == 989e12
    assert gpu.peak_flops("Some Future GPU") is None
    assert gpu.peak_flops("Some Future GPU", 123.0) == 123e12
    assert gpu.gpu_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"


def test_markdown_table():
    table = common.markdown_table(
        [{"name": "a", "x": 1234.567, "n": 1200, "ok": True}, {"name": "b", "x": None, "n": 3, "ok": False}],
        [("name", "name", 0), ("x", "x", 1), ("n", "count", 0), ("ok", "ok", 0)],
    )
    assert table.splitlines() == [
        "| name | x | count | ok |",
        "|---|---:|---:|---:|",
        "| a | 1,234.6 | 1,200 | yes |",
        "| b | - | 3 | no |",
    ]


def _row(variant, tok_s, cpu_tok_s, pad=0.1):
    return {
        "variant": variant,
        "tokens_per_s": tok_s,
        "tokens_per_cpu_s": cpu_tok_s,
        "padding_fraction": pad,
        "supervised_per_s": tok_s / 3,
        "pass_s": 10.0,
        "time_to_first_step_s": 12.0,
        "prep_s": 0.3,
        "prep_pct_of_run": 1.0,
        "peak_rss_mb": 700.0,
        "steps": 20,
        "total_params": 299072,
        "trainable_params": 32768,
        "real_tokens": 56034,
    }


def test_cpu_ratios_targets_and_markdown():
    rows = [
        _row("pipeline", 3000, 5000),
        _row("pipeline-grouped", 3600, 5400, 0.01),
        _row("naive", 1200, 2000, 0.66),
        _row("trl", 3100, 4900),
    ]
    cpu.add_ratios(rows)
    assert (
        rows[0]["vs_naive"] == 2.5
        and rows[0]["vs_naive_cpu"] == 2.5
        and rows[0]["vs_trl"] == pytest.approx(0.968, abs=1e-3)
    )
    t = cpu.targets(rows)
    assert t["best_pipeline_variant"] == "pipeline-grouped"
    assert t["defaults_vs_naive_met"] and not t["defaults_vs_trl_met"] and t["defaults_vs_trl_cpu_met"]
    assert t["best_vs_trl_met"] and t["defaults_prep_met"]
    results = {
        "device": "CPU, 2 cores",
        "command": "python bench/cpu.py",
        "wall_s": 600.0,
        "models": {
            "tiny": {
                "examples": 160,
                "total_params": 299072,
                "trainable_params": 32768,
                "real_tokens": 56034,
                "rows": rows,
                "targets": t,
            }
        },
        "prep": {
            "examples": 100,
            "uncached_s": 0.2,
            "uncached_cpu_s": 0.1,
            "render_only_s": 0.05,
            "render_only_cpu_s": 0.04,
            "tokenizer_only_s": 0.1,
            "tokenizer_only_cpu_s": 0.05,
            "labels_loop_s": 0.02,
            "labels_loop_cpu_s": 0.01,
            "cached_s": 0.001,
            "cached_cpu_s": 0.001,
        },
    }
    md = cpu.render_markdown(results)
    assert "| pipeline-grouped | 3,600 | 3.00 | 1.16 | 5,400 | 2.70 | 1.10 | 1.0 |" in md
    assert "`pipeline` 2.50 / 2.50x naive (target >= 2)" in md
    assert "| cached: hash inputs + datasets.load_from_disk (not in the library) | 100 | 0.00 | 0.00 | 100,000 |" in md


def _real_row(variant, tok_cpu, loss_after, rss=2000.0, dtype="float32"):
    return {
        "variant": variant,
        "dtype": dtype,
        "tokens_per_cpu_s": tok_cpu,
        "tokens_per_s": tok_cpu / 2,
        "padding_fraction": 0.1,
        "logits_fraction": 0.3,
        "cpu_s_per_step": 20.0,
        "layer_forwards_per_step": 2.0 if variant == "trl" else 1.0,
        "gflops_per_cpu_s": 30.0,
        "last_loss": 2.5,
        "eval_loss_after": loss_after,
        "peak_rss_mb": rss,
        "time_to_first_step_s": 60.0,
        "steps": 4,
        "total_params": 271_900_000,
        "nonembed_params": 104_000_000,
        "trainable_params": 3_800_000,
        "vocab": 262_144,
        "hidden": 640,
    }


def test_real_ratios_targets_and_markdown():
    rows = [
        _real_row("pipeline-unsloth", 50.0, 2.80, rss=2900.0, dtype="bfloat16"),
        _real_row("pipeline", 45.0, 2.79),
        _real_row("pipeline-full-logits", 20.0, 2.79),
        _real_row("trl", 20.0, 2.785),
        _real_row("trl-no-checkpointing", 25.0, 2.785),
    ]
    measured = [
        {"float32": {"gflops_per_cpu_s": 40.0, "size": 2048, "reps": 5, "threads": 1}},
        {"float32": {"gflops_per_cpu_s": 60.0, "size": 2048, "reps": 5, "threads": 1}, "load_average": [1, 2, 3]},
    ]
    peaks = cpu.best_peaks(measured)
    assert peaks == {"float32": measured[1]["float32"]}  # the better measurement; no bfloat16 measured
    cpu.add_real_ratios(rows, peaks)
    assert rows[1]["vs_trl_cpu"] == 2.25 and rows[1]["vs_trl"] == 2.25 and rows[1]["mfu"] == 0.5
    assert rows[0]["mfu"] is None  # no bfloat16 peak: no MFU rather than one against the wrong peak
    t = cpu.real_targets(rows)
    assert t["pipeline"] == {
        "vs_trl": 2.25,
        "vs_trl_cpu": 2.25,
        "peak_rss_mb": 2000.0,
        "speed_met": True,
        "eval_loss": 2.79,
        "trl_eval_loss": 2.785,
        "loss_met": True,
        "rss_met": True,
        "all_met": True,
        "vs_trl_no_checkpointing_cpu": 1.8,
    }
    assert t["pipeline-unsloth"]["loss_met"] is False and t["pipeline-unsloth"]["rss_met"] is False  # 2,900 MiB > 3 GB
    assert t["trained_positions_speedup_cpu"] == 2.25
    alone = cpu.real_targets([_real_row("pipeline", 45.0, 2.79)])  # no TRL row: nothing to compare with
    assert alone["pipeline"]["speed_met"] is None and alone["pipeline"]["loss_met"] is None
    assert alone["pipeline"]["rss_met"] and not alone["pipeline"]["all_met"]
    results = {
        "model": "gemma-3-270m",
        "device": "CPU, 2 cores",
        "command": "python bench/cpu.py --real",
        "settings": {
            "recipe": "params/cpu/gemma3-270m-hindi-summarization.yaml",
            "max_seq_length": 512,
            "lora_r": 16,
            "lora_alpha": 16,
            "target_modules": ["q_proj", "v_proj"],
            "batch": "4 x accumulation 1",
            "optim": "adamw_torch",
            "learning_rate": 0.0005,
            "lr_scheduler_type": "linear",
            "seed": 3407,
            "examples": 16,
            "warmup_steps": 1,
            "timed_steps": 3,
            "eval_examples": 8,
            "torch_threads": 1,
        },
        "base_eval": {"eval_loss": 3.4932, "eval_examples": 8},
        "peak_measurements": measured,
        "peaks": peaks,
        "rows": rows,
        "failed": ["naive"],
        "targets": t,
        "wall_s": 1500.0,
    }
    md = cpu.render_real_markdown(results)
    assert (
        "| pipeline | float32 | 45.0 | 2.25 | 22.5 | 2.25 | 10.0 | 30 | 20.0 | no | 30.0 | 50.0 | 2.500 | 2.790 |" in md
    )
    assert "| trl | float32 | 20.0 | 1.00 | 10.0 | 1.00 | 10.0 | 30 | 20.0 | yes |" in md
    assert "the base model, where every variant starts: 3.493" in md
    assert "float32 **60.0** GFLOP/CPU-s (before / after the variants: 40.0 / 60.0)" in md
    assert "Targets, `pipeline`: 2.25x plain TRL's useful tok/CPU-s" in md and "target >= 2: met" in md
    assert "(same loss: at most 0.01 above; NOT met), peak RSS 2,900 MiB = 3.04 GB (target <= 3 GB: NOT met)" in md
    assert "Failed (see the worker logs): naive." in md
    assert "Trained-position logits alone (`pipeline` over `pipeline-full-logits`, CPU time): 2.25x." in md


def test_every_real_variant_is_the_recipe(tmp_path):
    from unsloth_sft.config import load_config

    recipe = load_config(cpu.REAL_RECIPE).train
    for variant, (_, backend) in cpu.REAL_VARIANTS.items():
        cfg = cpu.real_config(variant, "tiny-gemma2", 4, tmp_path)
        assert cfg.model.backend == (backend or "transformers") and cfg.model.max_seq_length == 512
        assert (cfg.train.max_steps, cfg.train.warmup_steps, cfg.train.logging_steps) == (4, 0, 1)
        assert cfg.lora.use_gradient_checkpointing is False
        batch = (cfg.train.per_device_train_batch_size, cfg.train.gradient_accumulation_steps, cfg.train.learning_rate)
        assert batch == (recipe.per_device_train_batch_size, recipe.gradient_accumulation_steps, recipe.learning_rate)
        assert cfg.train.group_by_length is (recipe.group_by_length and variant != "naive")  # naive draws at random
    assert [v for v in cpu.REAL_VARIANTS if cpu.uses_unsloth(v, real=True)] == ["pipeline-unsloth"]
    assert [v for v in cpu.REAL_VARIANTS if cpu.trained_positions_used(v)] == ["pipeline-unsloth", "pipeline"]


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
            "command": "python bench/gpu.py",
            "rows": rows,
            "targets": verdict,
            "settings": {"seq_len": 2048, "batch": 2, "grad_accum": 4, "lora_r": 16, "optim": "adamw_8bit"},
        }
    )
    assert "| gemma2-9b | unsloth | 3,000 | 2.00 | 10.00 | 0.40 | 17.0 | - |" in md
    assert "2.0x the transformers backend's tokens/s (target >= 1.9: met)" in md


# ---------------------------------------------------------------- data and counting


def test_bench_conversations_mix_both_samples():
    convs = common.bench_conversations(300)
    assert len(convs) == 300
    assert convs == common.bench_conversations(300)  # seeded
    firsts = {c[0]["role"] for c in convs}
    assert firsts == {"user", "system"}  # summarization (user first) and chat (system prompts) both present


def test_token_counter_counts_logits_positions():
    import torch

    def collate(examples):
        return {
            "input_ids": torch.tensor([[5, 6, 7, 8, 0], [8, 9, 4, 0, 0]]),
            "labels": torch.tensor([[-100, -100, 7, 8, -100], [-100, 9, -100, -100, -100]]),
        }

    full = common.TokenCounter(collate, pad_token_id=0)
    full([])
    assert full.per_batch == [{"slots": 10, "real": 7, "supervised": 3, "logits": 7, "logits_slots": 10}]
    # trained positions: columns 0 and 1 predict a trained token in some row (labels 9 at 1, 7 at 2, 8 at 3: 0, 1, 2)
    part = common.TokenCounter(collate, pad_token_id=0, trained_positions=True)
    part([])
    part([])
    assert part.per_batch[0] == {"slots": 10, "real": 7, "supervised": 3, "logits": 6, "logits_slots": 6}
    assert common.summed(part.per_batch) == {"logits": 12, "logits_slots": 12, "real": 14, "slots": 20, "supervised": 6}


def test_train_flops_and_matmul_peak():
    # Gemma-3 270M with LoRA r16: ~104M non-embedding parameters, a 262,144 x 640 output projection
    flops = common.train_flops(
        tokens=1000, logits_positions=200, nonembed_params=104_000_000, vocab=262_144, hidden=640
    )
    assert flops == 2 * (2 * 104e6 * 1000 + 2 * 262_144 * 640 * 200)
    peak = common.matmul_peak("float32", size=64, reps=2)
    assert peak["gflops_per_cpu_s"] > 0 and peak["gflops_per_s"] > 0 and (peak["size"], peak["reps"]) == (64, 2)


def test_token_counter_counts_real_padded_and_supervised_tokens():
    import torch

    def collate(examples):
        return {
            "input_ids": torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]]),
            "labels": torch.tensor([[-100, 6, 7, -100], [-100, 9, -100, -100]]),
        }

    counter = common.TokenCounter(collate, pad_token_id=0)
    counter([{}, {}])
    assert (counter.slots, counter.real, counter.supervised, counter.batches) == (8, 5, 3, 1)


# ---------------------------------------------------------------- variants and worker processes


def test_every_cpu_variant_is_a_library_config(tmp_path, tiny_path):
    """Each pipeline variant is the library's config plus its own documented options, nothing patched."""
    for variant, (_, options) in cpu.VARIANTS.items():
        cfg = cpu.bench_config(variant, tiny_path, tmp_path)
        assert (cfg.model.load_in_4bit, cfg.model.max_seq_length, cfg.train.max_steps) == (False, cpu.MAX_LENGTH, None)
        for option in options or []:
            key, _, value = option.partition("=")
            section, name = key.split(".")
            assert str(getattr(getattr(cfg, section), name)).lower() == value, (variant, option)
    assert cpu.bench_config("pipeline", tiny_path, tmp_path).model.backend == "transformers"
    assert [v for v in cpu.VARIANTS if cpu.uses_unsloth(v)] == ["pipeline-unsloth"]


def test_run_variants_records_a_failing_variant_and_goes_on(monkeypatch):
    def fake(variant, model, n, threads=1):
        if variant == "naive":
            raise RuntimeError("boom")
        return {"variant": variant, "steps": 1}

    monkeypatch.setattr(cpu, "run_variant", fake)
    assert cpu.run_variants(["pipeline", "naive", "trl"], "tiny", 8) == [
        {"variant": "pipeline", "steps": 1},
        {"variant": "naive", "error": "RuntimeError: boom"},
        {"variant": "trl", "steps": 1},
    ]
    with pytest.raises(RuntimeError):  # one variant (the benchmark itself): the worker fails, the driver reports it
        cpu.run_variants(["naive"], "tiny", 8)


def test_spawn_returns_the_workers_json_or_none(tmp_path, capsys):
    script = tmp_path / "worker.py"
    script.write_text(
        "import json, sys\n"
        "if sys.argv[1] == 'fail':\n    print('it broke'); sys.exit(3)\n"
        "open(sys.argv[-1], 'w').write(json.dumps({'got': sys.argv[1]}))\n"
    )
    assert common.spawn(script, ["ok"], tmp_path / "a.json", tmp_path / "a.log") == (0, {"got": "ok"})
    assert common.spawn(script, ["fail"], tmp_path / "b.json", tmp_path / "b.log") == (3, None)
    out = capsys.readouterr().out
    assert "FAILED (exit 3)" in out and "it broke" in out


@pytest.mark.slow
def test_every_cpu_variant_starts(tiny_path):
    """`bench/cpu.py --smoke`: every variant trains one optimizer step on the tiny model (two processes, ~1 min)."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "cpu.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=BENCH.parent,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for variant in cpu.VARIANTS:
        assert f"{variant}: ok (1 optimizer step(s))" in done.stdout, done.stdout[-3000:]


@pytest.mark.slow
def test_every_real_model_variant_starts(tiny_path):
    """`bench/cpu.py --smoke --real`: every real-model variant trains one step and scores the held-out loss, on the
    tiny model (the real one is not needed; ~1 min: three processes at once), and the matmul-peak worker runs."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "cpu.py"), "--smoke", "--real"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=BENCH.parent,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for variant in cpu.REAL_VARIANTS:
        assert f"{variant}: ok (1 optimizer step(s))" in done.stdout, done.stdout[-3000:]
    assert "matmul peak: ok" in done.stdout


def test_cpu_main_validates_before_running(capsys):
    with pytest.raises(SystemExit):
        cpu.main(["--variants", "nope"])
    assert "unknown variant 'nope'" in capsys.readouterr().err
