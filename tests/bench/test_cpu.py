"""The CPU benchmarks' CPU-runnable parts: arguments, the variants' configs, ratios, targets and tables of
bench.cpu_synthetic and bench.cpu_real, and every variant of each starting for one optimizer step (`--smoke`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench import (
    common,
    cpu_real,
    cpu_real_report,
    cpu_real_worker,
    cpu_synthetic,
    cpu_synthetic_report,
    cpu_synthetic_worker,
)
from tests.conftest import ROOT

# ---------------------------------------------------------------- arguments


def test_cpu_synthetic_args_defaults_and_quick():
    args = cpu_synthetic.parse_args([])
    assert args.models == ["tiny", "small"]
    assert args.variants == cpu_synthetic.DEFAULT_VARIANTS
    assert args.threads == 1 and args.prep_examples == cpu_synthetic.PREP_EXAMPLES
    assert cpu_synthetic.examples_for("small", args) == cpu_synthetic.EXAMPLES["small"]
    quick = cpu_synthetic.parse_args(["--quick"])
    assert quick.models == ["tiny"] and quick.variants == cpu_synthetic.QUICK_VARIANTS
    assert cpu_synthetic.examples_for("tiny", quick) == cpu_synthetic.QUICK_EXAMPLES["tiny"]
    assert cpu_synthetic.examples_for("tiny", cpu_synthetic.parse_args(["--examples", "24"])) == 24
    smoke = cpu_synthetic.parse_args(["--smoke"])
    assert smoke.models == ["tiny"] and smoke.variants == list(cpu_synthetic.VARIANTS)
    assert (
        cpu_synthetic.examples_for("tiny", smoke)
        == cpu_synthetic.SMOKE_EXAMPLES
        == cpu_synthetic.BATCH * cpu_synthetic.ACCUM
    )  # one optimizer step


def test_cpu_real_args():
    args = cpu_real.parse_args([])
    assert args.variants == list(cpu_real.VARIANTS) and args.real_model == cpu_real.MODEL
    assert (args.steps, args.warmup_steps, args.eval_examples) == (cpu_real.STEPS, cpu_real.WARMUP, 8)
    assert args.out == common.RESULTS
    smoke = cpu_real.parse_args(["--smoke"])
    assert smoke.real_model == cpu_real.SMOKE_MODEL and (smoke.steps, smoke.warmup_steps) == (1, 0)
    assert smoke.variants == list(cpu_real.VARIANTS)
    one = cpu_real.parse_args(["--variants", "trl,naive", "--real-model", "smollm2-135m-instruct", "--steps", "2"])
    assert one.variants == ["trl", "naive"] and one.real_model == "smollm2-135m-instruct" and one.steps == 2
    again = cpu_real.parse_args(cpu_real.worker_flags(["trl"], one))  # what a worker process is told
    assert (again.variants, again.real_model, again.steps) == (["trl"], one.real_model, 2)
    assert (again.warmup_steps, again.eval_examples, again.worker) == (one.warmup_steps, one.eval_examples, True)


@pytest.mark.parametrize(
    "bench, argv",
    [
        (cpu_synthetic, ["--variants", "pipeline,fast"]),
        (cpu_synthetic, ["--models", "huge"]),
        (cpu_synthetic, ["--examples", "4"]),
        (cpu_synthetic, ["--threads", "0"]),
        (cpu_real, ["--variants", "pipeline-grouped"]),  # a variant of the synthetic benchmark
        (cpu_real, ["--steps", "0"]),
        (cpu_real, ["--warmup-steps", "-1"]),
        (cpu_real, ["--threads", "0"]),
    ],
)
def test_cpu_args_refuse_bad_values(bench, argv, capsys):
    with pytest.raises(SystemExit) as err:
        bench.parse_args(argv)
    assert err.value.code == 2
    assert "error" in capsys.readouterr().err


# ---------------------------------------------------------------- ratios, targets and tables


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
    cpu_synthetic_report.add_ratios(rows)
    assert (
        rows[0]["vs_naive"] == 2.5
        and rows[0]["vs_naive_cpu"] == 2.5
        and rows[0]["vs_trl"] == pytest.approx(0.968, abs=1e-3)
    )
    t = cpu_synthetic_report.targets(rows)
    assert t["best_pipeline_variant"] == "pipeline-grouped"
    assert t["defaults_vs_naive_met"] and not t["defaults_vs_trl_met"] and t["defaults_vs_trl_cpu_met"]
    assert t["best_vs_trl_met"] and t["defaults_prep_met"]
    results = {
        "device": "CPU, 2 cores",
        "command": "python -m bench.cpu_synthetic",
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
    md = cpu_synthetic_report.render_markdown(results)
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
    peaks = cpu_real_report.best_peaks(measured)
    assert peaks == {"float32": measured[1]["float32"]}  # the better measurement; no bfloat16 measured
    cpu_real_report.add_ratios(rows, peaks)
    assert rows[1]["vs_trl_cpu"] == 2.25 and rows[1]["vs_trl"] == 2.25 and rows[1]["mfu"] == 0.5
    assert rows[0]["mfu"] is None  # no bfloat16 peak: no MFU rather than one against the wrong peak
    t = cpu_real_report.targets(rows)
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
    alone = cpu_real_report.targets([_real_row("pipeline", 45.0, 2.79)])  # no TRL row: nothing to compare with
    assert alone["pipeline"]["speed_met"] is None and alone["pipeline"]["loss_met"] is None
    assert alone["pipeline"]["rss_met"] and not alone["pipeline"]["all_met"]
    results = {
        "model": "gemma-3-270m",
        "device": "CPU, 2 cores",
        "command": "python -m bench.cpu_real",
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
    md = cpu_real_report.render_markdown(results)
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


# ---------------------------------------------------------------- variants and worker processes


def test_every_cpu_variant_is_a_library_config(tmp_path, tiny_path):
    """Each pipeline variant is the library's config plus its own documented options, nothing patched."""
    for variant, (_, options) in cpu_synthetic_worker.VARIANTS.items():
        cfg = cpu_synthetic_worker.bench_config(variant, tiny_path, tmp_path)
        assert (cfg.model.load_in_4bit, cfg.model.max_seq_length, cfg.train.max_steps) == (
            False,
            cpu_synthetic_worker.MAX_LENGTH,
            None,
        )
        for option in options or []:
            key, _, value = option.partition("=")
            section, name = key.split(".")
            assert str(getattr(getattr(cfg, section), name)).lower() == value, (variant, option)
    assert cpu_synthetic_worker.bench_config("pipeline", tiny_path, tmp_path).model.backend == "transformers"
    assert [v for v in cpu_synthetic_worker.VARIANTS if cpu_synthetic_worker.uses_unsloth(v)] == ["pipeline-unsloth"]


def test_every_real_variant_is_the_recipe(tmp_path):
    from unsloth_sft.config.load import load_config

    recipe = load_config(cpu_real_worker.RECIPE).train
    for variant, (_, backend) in cpu_real_worker.VARIANTS.items():
        cfg = cpu_real_worker.recipe_config(variant, "tiny-gemma2", 4, tmp_path)
        assert cfg.model.backend == (backend or "transformers") and cfg.model.max_seq_length == 512
        assert (cfg.train.max_steps, cfg.train.warmup_steps, cfg.train.logging_steps) == (4, 0, 1)
        assert cfg.lora.use_gradient_checkpointing is False
        batch = (cfg.train.per_device_train_batch_size, cfg.train.gradient_accumulation_steps, cfg.train.learning_rate)
        assert batch == (recipe.per_device_train_batch_size, recipe.gradient_accumulation_steps, recipe.learning_rate)
        assert cfg.train.group_by_length is (recipe.group_by_length and variant != "naive")  # naive draws at random
    assert [v for v in cpu_real_worker.VARIANTS if cpu_real_worker.uses_unsloth(v)] == ["pipeline-unsloth"]
    assert [v for v in cpu_real_worker.VARIANTS if cpu_real_worker.trained_positions_used(v)] == [
        "pipeline-unsloth",
        "pipeline",
    ]


def test_run_variants_records_a_failing_variant_and_goes_on(monkeypatch):
    def fake(variant, model, n, threads=1):
        if variant == "naive":
            raise RuntimeError("boom")
        return {"variant": variant, "steps": 1}

    monkeypatch.setattr(cpu_synthetic_worker, "run_variant", fake)
    assert cpu_synthetic_worker.run_variants(["pipeline", "naive", "trl"], "tiny", 8) == [
        {"variant": "pipeline", "steps": 1},
        {"variant": "naive", "error": "RuntimeError: boom"},
        {"variant": "trl", "steps": 1},
    ]
    with pytest.raises(RuntimeError):  # one variant (the benchmark itself): the worker fails, the driver reports it
        cpu_synthetic_worker.run_variants(["naive"], "tiny", 8)


@pytest.mark.slow
def test_every_cpu_variant_starts(tiny_path):
    """`python -m bench.cpu_synthetic --smoke`: every variant trains one optimizer step on the tiny model (two processes, ~1 min)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.cpu_synthetic", "--smoke"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for variant in cpu_synthetic_worker.VARIANTS:
        assert f"{variant}: ok (1 optimizer step(s))" in done.stdout, done.stdout[-3000:]


@pytest.mark.slow
def test_every_real_model_variant_starts(tiny_path):
    """`python -m bench.cpu_real --smoke`: every real-model variant trains one step and scores the held-out loss, on the
    tiny model (the real one is not needed; ~1 min: three processes at once), and the matmul-peak worker runs."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.cpu_real", "--smoke"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for variant in cpu_real_worker.VARIANTS:
        assert f"{variant}: ok (1 optimizer step(s))" in done.stdout, done.stdout[-3000:]
    assert "matmul peak: ok" in done.stdout


@pytest.mark.parametrize("bench", [cpu_synthetic, cpu_real])
def test_cpu_main_validates_before_running(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--variants", "nope"])
    assert "unknown variant 'nope'" in capsys.readouterr().err
