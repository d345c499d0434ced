"""The GPU smoke run (bench.gpu_smoke, `bench.gpu --smoke`) on CPU: its arguments, params, the hand-over from bench.gpu,
the peak wrapper, and every step run for real on the tiny model (`--model tiny`): all passing, one failing (its
dependants skipped), one timing out."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import gpu, gpu_smoke
from tests.conftest import ROOT


def smoke(tmp_path, *extra: str, timeout: int = 600) -> tuple[subprocess.CompletedProcess, dict]:
    """`python -m bench.gpu_smoke --model tiny` with its work folder and results in tmp_path; (process, results)."""
    work, results = tmp_path / "work", tmp_path / "results"
    cmd = [sys.executable, "-m", "bench.gpu_smoke", "--model", "tiny", "--out", str(work), "--results", str(results)]
    done = subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    path = results / "gpu-smoke-cpu.json"  # a CPU try is never named as GPU evidence
    assert path.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    assert (results / "gpu-smoke-cpu.md").is_file()
    return done, json.loads(path.read_text())


def test_smoke_args():
    args = gpu_smoke.parse_args([])
    assert (args.model, args.steps_timeout, args.out, args.results, args.set) == ("2b", 600, None, None, [])
    args = gpu_smoke.parse_args(["--model", "tiny", "--steps-timeout", "60", "--set", "train.max_steps=3"])
    assert (args.model, args.steps_timeout, args.set) == ("tiny", 60, ["train.max_steps=3"])


@pytest.mark.parametrize("argv", [["--model", "9b"], ["--steps-timeout", "0"], ["--set", "novalue"]])
def test_smoke_args_refuse_bad_values(argv):
    with pytest.raises(SystemExit) as err:
        gpu_smoke.parse_args(argv)
    assert err.value.code == 2


def test_smoke_params_are_the_demo_recipe_with_the_model(tmp_path):
    p = gpu_smoke.smoke_params("2b", "/models/gemma2-2b", "smoke", tmp_path)
    assert (p["run_name"], p["output_dir"]) == ("smoke", str(tmp_path / "runs"))
    assert p["model"] == {
        "name": "/models/gemma2-2b",
        "backend": "unsloth",
        "max_seq_length": 1024,
        "load_in_4bit": True,
    }
    assert (p["data"]["source"], p["train"]["max_steps"], p["train"]["learning_rate"]) == (
        "sample:hindi-dialogsum",
        12,
        2e-4,
    )
    assert p["eval"]["max_samples"] == 8 and p["export"]["save_methods"] == ["lora"]
    tiny = gpu_smoke.smoke_params("tiny", "/models/tiny", "smoke", tmp_path)
    assert tiny["model"]["backend"] == "auto" and tiny["train"]["learning_rate"] == 0.005


def test_gpu_smoke_hands_over_and_refuses_the_2b_without_a_gpu(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert gpu.main(["--smoke", "--steps-timeout", "5"]) == 2
    assert "no CUDA GPU here" in capsys.readouterr().err


def test_peak_wrap_records_the_exit_whatever_it_is(tmp_path, capsys):
    out = tmp_path / "peak.json"
    assert gpu_smoke.main(["--peak-wrap", str(out), "--", "unsloth-sft", "--help"]) == 0
    assert json.loads(out.read_text()) == {"rc": 0, "peak_gpu_gb": None}
    assert gpu_smoke.main(["--peak-wrap", str(out), "--", "no-such-command"]) == 2
    assert json.loads(out.read_text())["rc"] == 2
    assert gpu_smoke.main(["--peak-wrap", str(out)]) == 2  # no `--`: the usage line


@pytest.mark.slow
def test_smoke_every_step_passes_on_the_tiny_model(tmp_path, tiny_path):
    """train, eval (8 examples), merged export and its check, infer, the papermill notebook: ~1 min on 2 cores."""
    done, results = smoke(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert list(results["steps"]) == list(gpu_smoke.STEPS)
    for name, step in results["steps"].items():
        assert step["status"] == "passed", (name, step)
        assert step["seconds"] > 0 and step["peak_gpu_gb"] is None and step["error"] is None
        assert (tmp_path / "work" / "logs" / f"{name}.log").is_file()
    assert results["finished"] and results["passed"] and results["gpu"].startswith("CPU")
    assert results["versions"]["torch"] and results["versions"]["papermill"]
    work = tmp_path / "work"
    assert (work / "runs" / "smoke" / "merged").is_dir() and (
        work / "runs" / "smoke-notebook" / "metrics.json"
    ).is_file()
    assert len((work / "infer-output.jsonl").read_text().splitlines()) == 1
    assert "| train | passed |" in (tmp_path / "results" / "gpu-smoke-cpu.md").read_text()
    assert not list((ROOT / "bench" / "results").glob("gpu-smoke-cpu*"))


@pytest.mark.slow
def test_smoke_a_failing_step_fails_the_run_and_skips_what_needs_it(tmp_path, tiny_path):
    done, results = smoke(tmp_path, "--set", "train.no_such_key=1")
    assert done.returncode == 1
    steps = results["steps"]
    assert steps["build"]["status"] == "passed"
    assert steps["train"]["status"] == "failed"
    assert steps["train"]["error"].startswith("unsloth-sft: error: ")  # the log's last line
    assert "unknown key 'train.no_such_key'" in steps["train"]["error"]
    for name in ("eval", "export", "infer"):
        assert steps[name] == {
            "status": "skipped",
            "seconds": 0.0,
            "peak_gpu_gb": None,
            "log": None,
            "error": "needs train, which failed",
        }
    assert steps["notebook"]["status"] == "failed" and "no_such_key" in steps["notebook"]["error"]
    assert results["finished"] and not results["passed"]
    assert "- train: failed: unsloth-sft: error:" in (tmp_path / "results" / "gpu-smoke-cpu.md").read_text()


@pytest.mark.slow
def test_smoke_a_step_past_its_time_is_killed(tmp_path, tiny_path):
    done, results = smoke(tmp_path, "--steps-timeout", "2")
    assert done.returncode == 1
    killed = [s for s in results["steps"].values() if (s["error"] or "").startswith("timed out after 2 s")]
    assert killed and all(s["status"] == "failed" and s["seconds"] < 30 for s in killed)
    assert "(process group killed)" in killed[0]["error"]
    assert results["steps"]["eval"]["status"] == "skipped"  # train never finished (or never started)
