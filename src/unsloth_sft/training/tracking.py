"""Experiment tracking: which trackers train.report_to names, where they write, the config they get."""

from __future__ import annotations

import os

from unsloth_sft.config.run import RunConfig
from unsloth_sft.core.errors import ConfigError

TENSORBOARD_DIR = "logs"  # RUN_DIR/logs: TensorBoard event files when train.report_to has tensorboard


def trackers(cfg: RunConfig) -> list[str]:
    """train.report_to without "none", checked: a known integration whose package is installed."""
    from transformers.integrations import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    names = [r for r in cfg.train.report_to if r != "none"]
    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            valid = ", ".join(INTEGRATION_TO_CALLBACK)
            raise ConfigError(f"train.report_to: '{name}' is not a tracker; use none or one of {valid}")
        if name not in get_available_reporting_integrations():
            extra = " (or the [tracking] extra)" if name == "tensorboard" else ""
            raise ConfigError(
                f"train.report_to: {name} is not installed; pip install {name}{extra}, or remove it from report_to"
            )
    if "wandb" in names:
        check_wandb_login()
    return names


def check_wandb_login() -> None:
    """wandb needs a login or an offline mode; without either it fails after the model loaded, leaving half a run."""
    import netrc

    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return
    if os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true", "yes"):
        return
    try:
        if netrc.netrc(os.environ.get("NETRC")).authenticators("api.wandb.ai"):  # what `wandb login` writes
            return
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    raise ConfigError(
        "train.report_to: wandb has no login here; run `wandb login` (or set WANDB_API_KEY), set WANDB_MODE=offline "
        "to log into the run folder, or remove wandb from report_to"
    )


def tracker_env(cfg: RunConfig, names: list[str]) -> None:
    """Trackers write into the run folder: TensorBoard to RUN_DIR/logs, wandb to RUN_DIR/wandb.

    transformers 5 dropped TrainingArguments.logging_dir; its TensorBoardCallback reads TENSORBOARD_LOGGING_DIR
    when it is created (else OUTPUT_DIR/runs/...), so it is set here, per run, before the trainer exists.
    """
    if "tensorboard" in names:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(cfg.run_dir.absolute() / TENSORBOARD_DIR)
    if "wandb" in names:
        os.environ["WANDB_DIR"] = str(cfg.run_dir.absolute())  # offline runs: RUN_DIR/wandb/offline-run-*
        os.environ.setdefault("WANDB_PROJECT", "unsloth-sft")


def config_callback(cfg: RunConfig, names: list[str], callbacks: list):
    """Sends the run name and the resolved config to the trackers, once they have started (rank 0 only)."""
    import yaml
    from transformers import TrainerCallback
    from transformers.integrations import TensorBoardCallback

    config = cfg.to_dict()

    class ConfigToTrackers(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            if "tensorboard" in names:
                for cb in callbacks:
                    if isinstance(cb, TensorBoardCallback) and cb.tb_writer is not None:
                        text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
                        cb.tb_writer.add_text("run_name", cfg.run_name)
                        cb.tb_writer.add_text("config", "    " + text.replace("\n", "\n    "))  # markdown code block
            if "wandb" in names:
                import wandb

                if wandb.run is not None:
                    wandb.config.update({"unsloth_sft": config}, allow_val_change=True)
            if "mlflow" in names:
                import mlflow

                if mlflow.active_run() is not None:
                    mlflow.log_dict(config, "unsloth_sft_config.json")

    return ConfigToTrackers()
