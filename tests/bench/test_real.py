"""`python -m bench real`: its arguments, real.json exactly as the contract says (bench/README.md), the MFU formula,
the loss check against the slow path, the `python -m bench` dispatch, and one run on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import __main__ as dispatch
from bench import real
from tests.conftest import ROOT

CPU = {"model": "Intel(R) Xeon(R) Processor @ 2.80GHz", "flags": ["avx2", "avx512f"], "all_flags": [], "cores": 2}


def row(tokens_per_s, flops, timed_s, losses, rss=1900.0):
    return {
        "tokens_per_s": tokens_per_s,
        "flops": flops,
        "timed_s": timed_s,
        "peak_rss_mb": rss,
        "final_loss": losses[-1],
        "step_losses": losses,
        "steps": len(losses),
    }


def test_quick_and_full_arguments():
    quick = real.parse_args(["--quick", "--out", "x"])
    assert (quick.steps, quick.warmup_steps, quick.peak_reps) == (3, 1, 3) and quick.threads >= 1
    assert str(quick.out) == "x" and quick.model == "gemma-3-270m" and quick.compile is None
    full = real.parse_args(["--threads", "3", "--compile", "false"])
    assert (full.steps, full.threads, full.compile) == (8, 3, "false")
    again = real.parse_args(real.worker_flags("trl", full))  # what a worker process is told
    assert (again.variant, again.threads, again.steps, again.compile) == ("trl", 3, 8, "false")


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--threads", "0"], ["--warmup-steps", "-1"], ["--nope"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as err:
        real.parse_args(argv)
    assert err.value.code == 2 and "error" in capsys.readouterr().err


def test_real_json_is_the_contract_and_mfu_is_flops_over_the_peak():
    rows = {"recipe": row(400.0, 300e9, 2.0, [3.1, 2.9]), "trl": row(100.0, 120e9, 4.0, [4.0, 3.8], rss=6000.0)}
    out = real.real_json(CPU, 2, "float32", 150.0, rows)
    assert list(out) == ["cpu", "threads", "compute_dtype", "peak_tflops", "variants"]
    assert out["cpu"] == {"model": CPU["model"], "flags": ["avx2", "avx512f"]} and out["threads"] == 2
    assert (out["compute_dtype"], out["peak_tflops"]) == ("float32", 0.15)
    assert list(out["variants"]) == ["recipe", "trl"]
    recipe = out["variants"]["recipe"]
    assert list(recipe) == list(real.V_KEYS)
    assert recipe == {"tokens_per_s": 400.0, "mfu": 1.0, "peak_rss_mb": 1900.0, "final_loss": 2.9, "steps": 2}
    assert out["variants"]["trl"]["mfu"] == 0.2  # 120 GFLOP in 4 s = 30 GFLOP/s of a 150 peak
    assert json.loads(json.dumps(out)) == out
    assert all(isinstance(v, (float, int)) for v in recipe.values())
    assert real.real_json(CPU, 2, "bfloat16", 0.0, {"recipe": None, "trl": None})["variants"]["recipe"] is None


def test_the_loss_check_compares_step_by_step():
    rows = {"recipe": row(1, 1, 1, [3.0, 2.5, 2.2]), "recipe-slow": row(1, 1, 1, [3.0, 2.51, 2.205])}
    check = real.loss_check(rows)
    assert check["within_noise"] is True and check["max_abs_diff"] == pytest.approx(0.01)
    rows["recipe-slow"]["step_losses"] = [3.0, 2.5, 2.4]
    assert real.loss_check(rows)["within_noise"] is False
    assert real.loss_check({"recipe": rows["recipe"]}) is None


def test_python_m_bench_names_its_benchmarks(capsys):
    assert dispatch.main([]) == 2 and dispatch.main(["nope"]) == 2
    assert "real" in capsys.readouterr().err
    assert set(dispatch.BENCHMARKS) >= {"real", "cpu-real", "cpu-synthetic", "gpu"}


@pytest.mark.slow
def test_a_run_on_the_tiny_model_writes_the_contract(tmp_path, tiny_path):
    """`python -m bench real` end to end on the tiny model, eager, one step of each variant (~2 min)."""
    argv = ["--quick", "--model", "tiny-gemma2", "--steps", "1", "--warmup-steps", "0", "--compile", "false"]
    done = subprocess.run(
        [sys.executable, "-m", "bench", "real", *argv, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads((tmp_path / "real.json").read_text())
    assert out["compute_dtype"] in ("float32", "bfloat16") and out["peak_tflops"] > 0 and out["threads"] >= 1
    for name in ("recipe", "trl"):
        v = out["variants"][name]
        assert list(v) == list(real.V_KEYS) and v["steps"] == 1 and v["tokens_per_s"] > 0 and 0 < v["mfu"] < 1
        assert 0 < v["final_loss"] < 20 and v["peak_rss_mb"] > 100
    details = json.loads((tmp_path / "real-details.json").read_text())
    assert "MALLOC_MMAP_MAX_" not in details["rows"]["recipe"]["malloc"]  # as the CLI: malloc settings are opt-in
    assert details["rows"]["trl"]["malloc"] == {}
