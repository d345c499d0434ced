"""Tracking: train.report_to reaches the trainer, logs land in the run folder, the config reaches the tracker."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import small_config


def _tracking_config(tmp_path, monkeypatch, *trackers: str):
    # The library points the trackers at the run folder through their env vars: restore them after the test.
    for var in ("TENSORBOARD_LOGGING_DIR", "WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.setenv(var, "unset-by-test")
        monkeypatch.delenv(var)
    return small_config(
        tmp_path, "model.backend=transformers", "train.max_steps=3", f"train.report_to=[{', '.join(trackers)}]"
    )


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None,
    reason="tensorboard not installed (pip install tensorboard, or the [tracking] extra)",
)
def test_tensorboard_logs_land_in_run_folder_with_config(tmp_path, monkeypatch):
    """RUN_DIR/logs holds the loss curve, the run name and the resolved config; nothing under checkpoints/runs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from unsloth_sft import pipeline

    cfg = _tracking_config(tmp_path, monkeypatch, "tensorboard")
    pipeline.run_training(cfg)
    logs = cfg.run_dir / "logs"
    assert list(logs.glob("events.out.tfevents.*"))
    assert not (cfg.run_dir / "checkpoints" / "runs").exists()
    events = EventAccumulator(str(logs))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]

    def text(tag: str) -> str:
        return events.Tensors(f"{tag}/text_summary")[0].tensor_proto.string_val[0].decode()

    assert text("run_name") == "t"
    config = text("config")
    assert "run_name: t" in config and "report_to:" in config and "backend: transformers" in config


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed (pip install wandb)")
def test_wandb_offline_gets_run_name_and_config(tmp_path, monkeypatch):
    """WANDB_MODE=offline, no account: the run is named after run_name, holds our config, and lives in RUN_DIR/wandb."""
    import wandb

    from unsloth_sft import pipeline

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = _tracking_config(tmp_path, monkeypatch, "wandb")
    try:
        pipeline.run_training(cfg)
        assert wandb.run is not None and wandb.run.name == "t"
        assert wandb.run.config["unsloth_sft"]["run_name"] == "t"
        assert wandb.run.config["unsloth_sft"]["train"]["report_to"] == ["wandb"]
    finally:
        wandb.finish()
    # The offline run (to `wandb sync` later) is in the run folder. Its records are flushed by wandb's service
    # process after finish() returns, so their content is checked above, on the live run, not in the file.
    assert len(list((cfg.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))) == 1


def test_report_to_is_checked(tmp_path):
    """An unknown tracker, or one whose package is missing, is refused in one line with the fix."""
    from transformers.integrations import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    from unsloth_sft import pipeline
    from unsloth_sft.core.errors import ConfigError
    from unsloth_sft.training.tracking import trackers

    assert trackers(small_config(tmp_path)) == []
    cfg = small_config(tmp_path, "train.report_to=[tensorbored]")
    with pytest.raises(ConfigError, match="'tensorbored' is not a tracker"):
        pipeline.start(cfg)  # before the run folder is made or the model loads
    assert not cfg.run_dir.exists()
    missing = [n for n in INTEGRATION_TO_CALLBACK if n not in get_available_reporting_integrations()]
    if missing:
        with pytest.raises(ConfigError, match=f"{missing[0]} is not installed; pip install"):
            trackers(small_config(tmp_path, f"train.report_to=[{missing[0]}]"))
