"""Runs that survive: SIGKILL after a checkpoint and resume; NaN stops with the step; finished runs are kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "unsloth_sft", "train"]
ROOT = Path(__file__).resolve().parents[2]


def _params(tmp_path: Path, name: str, **train) -> Path:
    import yaml

    raw = yaml.safe_load((ROOT / "params/cpu/chat.yaml").read_text())
    raw.update(run_name=name, output_dir=str(tmp_path))
    raw["model"]["backend"] = "transformers"
    raw["train"].update({"max_steps": 30, "save_steps": 5, "save_total_limit": 2, "learning_rate": 0.003, **train})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    """Kill -9 after a checkpoint; the rerun resumes from it (steps, optimizer, scheduler, RNG) and ends
    where an uninterrupted run ends."""
    params = _params(tmp_path, "killed")
    run = tmp_path / "killed"
    proc = subprocess.Popen([*CLI, str(params)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (run / "checkpoints" / "checkpoint-10" / "trainer_state.json").is_file():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "metrics.json").exists()
    done = subprocess.run([*CLI, str(params)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["steps"] == 30
    assert Path(resumed["resumed_from"]).name.startswith("checkpoint-")
    assert int(Path(resumed["resumed_from"]).name.split("-")[1]) >= 10

    clean = subprocess.run([*CLI, str(_params(tmp_path, "clean"))], capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr[-2000:]
    straight = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    assert resumed["last_loss"] == pytest.approx(straight["last_loss"], rel=1e-3, abs=1e-4)
    history = json.loads((run / "loss_history.json").read_text())["history"]
    assert [h["step"] for h in history] == list(range(1, 31))  # the log from before the kill is kept


def test_nan_loss_stops_with_step_and_keeps_good_checkpoint(tmp_path):
    params = _params(tmp_path, "nan", learning_rate=1e30, save_steps=1, max_steps=10)
    done = subprocess.run([*CLI, str(params)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("unsloth-sft: error: loss became NaN/inf at step ")
    step = int(line.split("at step ")[1].split(";")[0])
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "nan" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and max(checkpoints) < step
    assert not (tmp_path / "nan" / "metrics.json").exists() and not (tmp_path / "nan" / "adapter").exists()


def test_finished_run_is_refused_then_overwritten_on_request(tmp_path, capsys):
    """Defect 2: overwrite replaces the whole folder: a rerun with fewer export methods leaves no stale merged/
    (which infer would load) and no stale eval/, and the old folder set aside is gone once the new run finished."""
    from unsloth_sft.app.cli import main

    params = _params(tmp_path, "done", max_steps=3, save_steps=None)
    assert main(["train", str(params), "--set", "export.save_methods=[lora,merged_16bit]"]) == 0
    run = tmp_path / "done"
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text("{}")
    snapshot = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", str(params)]) == 2
    assert "holds a finished run; set overwrite: true" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == snapshot
    assert main(["train", str(params), "--set", "overwrite=true", "--set", "export.save_methods=[lora]"]) == 0
    assert "the previous run is in" in capsys.readouterr().out
    assert not (run / "merged").exists() and not (run / "eval").exists()
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert not list(run.glob(".*tmp*")) and not list(run.glob(".*.old")) and not list(tmp_path.glob(".done.old-*"))
    assert (run / "metrics.json").read_bytes() != snapshot[run / "metrics.json"]  # replaced, as asked


def test_rerun_with_nothing_left_to_train_reports_no_speed(tmp_path):
    """Defect 1: a crash after the last checkpoint, then a rerun: it resumes at the end and trains 0 steps; its
    metrics.json says so instead of claiming a speed (tokens seen before the crash over a 0 s runtime)."""
    from unsloth_sft.app.cli import main

    params = _params(tmp_path, "again", max_steps=3, save_steps=3)
    assert main(["train", str(params)]) == 0
    (tmp_path / "again" / "metrics.json").unlink()  # as if the process died while saving the adapter
    assert main(["train", str(params)]) == 0
    metrics = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["steps_this_run"] == 0 and metrics["resumed_at_step"] == 3
    assert metrics["tokens_per_s"] is None
    from safetensors.torch import load_file  # the adapter saved is the checkpoint's, not a fresh initialisation

    saved = load_file(tmp_path / "again" / "adapter" / "adapter_model.safetensors")
    checkpoint = load_file(tmp_path / "again" / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors")
    assert saved.keys() == checkpoint.keys() and all((saved[k] == checkpoint[k]).all() for k in saved)
