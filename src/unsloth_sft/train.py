"""Training with TRL's SFTTrainer: config -> SFTConfig, callbacks for memory and NaN, metrics of the run.

Several processes (`accelerate launch` / `torchrun`): every rank runs start -> fit, the Trainer shards the
batches across ranks (DDP), and only rank 0 writes the run folder (see pipeline.finish).
"""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any

from unsloth_sft.config import RunConfig, best_metric_name, eval_strategy, gradient_checkpointing, load_best
from unsloth_sft.distributed import gather, is_main_process, world_size
from unsloth_sft.errors import RunError
from unsloth_sft.runs import CHECKPOINTS
from unsloth_sft.tracking import config_callback, tracker_env, trackers


def sft_config(cfg: RunConfig, output_dir: Path, backend: str | None = None):
    """TRL's SFTConfig for a run (names follow the upstream arguments one to one)."""
    import torch
    from trl import SFTConfig

    t = cfg.train
    cuda = torch.cuda.is_available()
    bf16 = (torch.cuda.is_bf16_supported() if cuda else False) if t.bf16 is None else (t.bf16 and cuda)
    strategy = eval_strategy(t)
    best = load_best(t)
    # the best checkpoint must exist when load_best_model_at_end reloads it: save at every evaluation
    save_strategy = strategy if best else ("steps" if t.save_steps else "no")
    save_steps = (t.save_steps or t.eval_steps or 500) if best else (t.save_steps or 500)
    return SFTConfig(
        output_dir=str(output_dir),
        run_name=cfg.run_name,
        # padding-free without packing: TRL refuses a max_length it would not enforce; data.tokenize already cut rows
        max_length=None if t.padding_free and not t.packing else cfg.model.max_seq_length,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size or t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        max_steps=t.max_steps if t.max_steps is not None else -1,
        num_train_epochs=t.num_train_epochs if t.num_train_epochs is not None else 1.0,
        warmup_steps=t.warmup_ratio if t.warmup_ratio is not None else t.warmup_steps,  # < 1: a ratio (5.x)
        lr_scheduler_type=t.lr_scheduler_type,
        optim=t.optim,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        neftune_noise_alpha=t.neftune_noise_alpha,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        save_strategy=save_strategy,
        save_steps=save_steps,
        save_total_limit=t.save_total_limit,
        packing=t.packing,
        padding_free=t.padding_free,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        # transformers backend: load_model already set checkpointing as lora.use_gradient_checkpointing says;
        # SFTConfig's default (True) would turn it on regardless. unsloth sets its own in get_peft_model, and the
        # Trainer must not add a second pass when the config turns it off (it did: every layer ran twice).
        **(
            {"gradient_checkpointing": False}
            if backend == "transformers" or not gradient_checkpointing(cfg.lora)
            else {}
        ),
        bf16=bf16,
        fp16=cuda and not bf16 and cfg.model.dtype != "float32",
        use_cpu=not cuda,
        report_to=trackers(cfg) or "none",
        dataset_num_proc=t.dataset_num_proc,
        # LoRA: every adapter weight gets a gradient each step, so DDP need not search for unused ones (and the
        # search breaks reentrant checkpointing). transformers 5 checkpoints non-reentrantly by default.
        ddp_find_unused_parameters=t.ddp_find_unused_parameters,
        include_num_input_tokens_seen="non_padding",
        logging_nan_inf_filter=False,  # the default hides a NaN loss from the log (and from StopOnNaN)
        eval_strategy=strategy,
        eval_steps=t.eval_steps,
        eval_on_start=t.eval_on_start,
        # the loss only: no logits gathered across the test split (a 262k vocabulary x every position would be
        # GBs); the CPU trainer computes logits at trained positions only, TRL's GPU loss never builds them
        prediction_loss_only=True,
        load_best_model_at_end=best,
        metric_for_best_model=best_metric_name(t) if strategy != "no" else None,
        greater_is_better=t.greater_is_better,
        disable_tqdm=not is_main_process(),
    )


def _nan_callback():
    from transformers import TrainerCallback

    class StopOnNaN(TrainerCallback):
        """Stops at the first NaN/inf loss, before a checkpoint of the broken weights can be saved."""

        def __init__(self):
            self.bad_step: int | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss) and self.bad_step is None:
                self.bad_step = state.global_step
                control.should_training_stop = True
                control.should_save = False

    return StopOnNaN()


def sft_trainer_class():
    """TRL's SFTTrainer (or unsloth's, once unsloth is imported); on a CPU, with logits computed only at trained
    positions (`trained_positions`) and the model's own loss: TRL 1.15's loss needs Triton, which CPU builds of
    torch lack, so without this a CPU run would fail unless unsloth had replaced the trainer."""
    import torch
    from transformers import Trainer
    from trl import SFTTrainer

    if torch.cuda.is_available():  # unsloth's fused / TRL's chunked losses do better on a GPU
        return SFTTrainer

    class SFTTrainerCPU(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, trained_positions(inputs), return_outputs, num_items_in_batch)

    return SFTTrainerCPU


def trained_positions(inputs: dict) -> dict:
    """A batch whose forward pass computes logits only at positions that predict a trained token.

    The vocabulary projection is most of a small model's compute (Gemma-3 270M: 168M of its 268M parameters
    are the 262k x 640 embedding it shares with the output), and at prompt positions it only fed labels of
    -100. transformers' own loss (`shift_labels`, the Trainer's scaling for accumulation and processes) is
    kept; only the logits it sees shrink. bench/cpu.py measures the difference.
    """
    targets = inputs["labels"][:, 1:]
    keep = (targets != -100).any(dim=0).nonzero().squeeze(-1)  # one index set for the batch's rows
    if len(keep) == 0:
        return inputs
    picked = targets[:, keep]
    return {**inputs, "labels": picked, "shift_labels": picked, "logits_to_keep": keep}


def early_stopping_callback(cfg: RunConfig):
    """transformers' EarlyStoppingCallback from train.early_stopping_*, or None when early stopping is off."""
    from transformers import EarlyStoppingCallback

    t = cfg.train
    if t.early_stopping_patience is None:
        return None
    return EarlyStoppingCallback(t.early_stopping_patience, t.early_stopping_threshold)


def build_trainer(cfg: RunConfig, model, tokenizer, train_dataset, eval_dataset=None, callbacks=(), backend=None):
    """An SFTTrainer over pre-tokenized rows (input_ids + labels: our masks are used as they are).

    `callbacks` run in order, before early stopping (a generation metric must be in the metrics it reads).
    """
    args = sft_config(cfg, cfg.run_dir / CHECKPOINTS, backend)
    stopper = early_stopping_callback(cfg)
    callbacks = [*callbacks, *([stopper] if stopper else [])]
    names = trackers(cfg)
    tracker_env(cfg, names)
    trainer = sft_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if names:
        trainer.add_callback(config_callback(cfg, names, trainer.callback_handler.callbacks))
    return trainer


def train(cfg: RunConfig, trainer, resume_from: Path | None = None) -> dict[str, Any]:
    """Run training (resuming when given a checkpoint) and return the run's metrics as a plain dict."""
    from unsloth_sft.memory import MemoryCallback

    memory = next((c for c in trainer.callback_handler.callbacks if isinstance(c, MemoryCallback)), None)
    if memory is None:
        memory = MemoryCallback(verbose=is_main_process() and world_size() == 1)  # several: all ranks below
        trainer.add_callback(memory)
    nan = _nan_callback() if cfg.train.stop_on_nan else None
    if nan is not None:
        trainer.add_callback(nan)
    resumed = {}
    if resume_from is not None:
        resumed = json.loads((Path(resume_from) / "trainer_state.json").read_text())
        if is_main_process():
            print(f"Resuming from {resume_from} (step {resumed.get('global_step')})")
    done = resumed and cfg.train.max_steps is not None and int(resumed.get("global_step") or 0) >= cfg.train.max_steps
    stopped = (resumed.get("stateful_callbacks") or {}).get("TrainerControl", {}).get("args", {})
    done = done or bool(stopped.get("should_training_stop"))  # early stopping had ended it before the interruption
    if done:  # transformers 5.17, resumed at its last step, takes one step beyond max_steps: nothing is left to train
        output = restore_finished(trainer, Path(resume_from), load_best(cfg.train))
        memory.on_train_end(trainer.args, trainer.state, trainer.control)
    else:
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if nan is not None and nan.bad_step is not None:
        raise RunError(
            f"loss became NaN/inf at step {nan.bad_step}; training stopped (last good checkpoint kept); "
            "lower train.learning_rate or check the data"
        )
    metrics = run_metrics(cfg, trainer, output, memory.report, resumed)
    metrics.update(stop_summary(cfg, trainer))
    metrics["memory_per_rank"] = gather(memory.report)  # collective: every rank reaches it after train()
    if is_main_process() and len(metrics["memory_per_rank"]) > 1:
        from unsloth_sft.memory import format_memory

        for report in metrics["memory_per_rank"]:
            print(format_memory(report))
    return metrics


def restore_finished(trainer, checkpoint: Path, best: bool = False):
    """A checkpoint at the run's last step, restored without training: its weights and state, a 0 s runtime;
    with `best` (load_best_model_at_end), then the best checkpoint's weights, as the end of trainer.train loads them."""
    from transformers import TrainerState
    from transformers.trainer_utils import TrainOutput

    trainer._load_from_checkpoint(str(checkpoint))  # the adapter (or full) weights, as trainer.train would load them
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    for callback in trainer.callback_handler.callbacks:  # early stopping's counter, which stop_summary reads
        saved = trainer.state.stateful_callbacks.get(type(callback).__name__)
        if isinstance(saved, dict) and hasattr(callback, "early_stopping_patience_counter"):
            callback.early_stopping_patience_counter = saved["attributes"]["early_stopping_patience_counter"]
    if best and trainer.state.best_model_checkpoint and Path(trainer.state.best_model_checkpoint).is_dir():
        trainer._load_best_model()
    return TrainOutput(trainer.state.global_step, None, {"train_runtime": 0.0})


def run_metrics(cfg: RunConfig, trainer, output, memory: dict, resumed: dict | None = None) -> dict[str, Any]:
    """Runtime, steps, tokens, loss summary and memory for metrics.json.

    After a resume, runtime and tokens/s cover this process's steps only (`resumed`: the checkpoint's
    trainer_state), so a rerun that had nothing left to train reports no speed instead of an absurd one.
    """
    state = trainer.state
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    runtime = output.metrics.get("train_runtime", 0.0)
    tokens = int(state.num_input_tokens_seen or 0)
    resumed = resumed or {}
    new_steps = state.global_step - int(resumed.get("global_step") or 0)
    new_tokens = tokens - int(resumed.get("num_input_tokens_seen") or 0)
    batch = cfg.train.per_device_train_batch_size * cfg.train.gradient_accumulation_steps
    return {
        "run_name": cfg.run_name,
        "runtime_s": round(runtime, 3),
        "steps": state.global_step,
        "epochs": round(state.epoch or 0.0, 4),
        "tokens_seen": tokens,
        "steps_this_run": new_steps,
        "resumed_at_step": resumed.get("global_step"),
        "tokens_per_s": round(new_tokens / runtime, 1) if runtime and new_steps > 0 else None,
        "effective_batch_size": batch * world_size(),
        "processes": world_size(),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "min_loss": min(losses) if losses else None,
        "train_loss": output.training_loss,
        "memory": memory,
    }


def eval_history(trainer) -> list[dict]:
    """Each evaluation during training: its step, eval loss and any generation metric (eval_* keys)."""
    skip = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "eval_num_tokens")
    return [
        {"step": h["step"], **{k: v for k, v in h.items() if k.startswith("eval_") and k not in skip}}
        for h in trainer.state.log_history
        if "eval_loss" in h
    ]


def stop_summary(cfg: RunConfig, trainer) -> dict[str, Any]:
    """Why training stopped and which step was best (with load_best_model_at_end, the step that was exported)."""
    from transformers import EarlyStoppingCallback

    t, state = cfg.train, trainer.state
    stopper = next((c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)), None)
    if stopper is not None and stopper.early_stopping_patience_counter >= stopper.early_stopping_patience:
        reason = (
            f"early stopping: {best_metric_name(t)} did not improve by more than {t.early_stopping_threshold} "
            f"for {stopper.early_stopping_patience} evaluations"
        )
    elif t.max_steps is not None:
        reason = f"reached train.max_steps {t.max_steps}"
    else:
        reason = f"finished train.num_train_epochs {t.num_train_epochs}"
    history = eval_history(trainer)
    out: dict[str, Any] = {"stopped": {"reason": reason, "step": state.global_step}, "eval_history": history}
    if history:
        out["best"] = {
            "metric": best_metric_name(t),
            "value": state.best_metric,
            "step": state.best_global_step,
            "checkpoint": Path(state.best_model_checkpoint).name if state.best_model_checkpoint else None,
            "loaded_at_end": load_best(t),  # True: the adapter / merged model saved are this step's weights
        }
    return out


def loss_history(trainer) -> list[dict]:
    return [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]


def plot_loss(
    history: list[dict], path: Path, title: str = "training loss", evals: list[dict] | None = None, best=None
) -> Path:
    """Save the loss curve (train, and eval when evaluated during training) as a PNG (matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], marker=".", label="train")
    if evals:
        ax.plot([h["step"] for h in evals], [h["eval_loss"] for h in evals], marker="o", label="eval")
        if best is not None:
            ax.axvline(best, color="grey", linestyle="--", linewidth=1, label=f"best (step {best})")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return Path(path)


def environment() -> dict[str, Any]:
    """Package versions and device, saved beside what the run made."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    versions = {}
    for name in (
        "torch",
        "transformers",
        "trl",
        "peft",
        "datasets",
        "accelerate",
        "bitsandbytes",
        "unsloth",
        "unsloth_zoo",
    ):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    return {"python": platform.python_version(), "device": device, "packages": versions}
