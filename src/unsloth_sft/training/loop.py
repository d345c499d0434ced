"""Training a built trainer (resuming when asked) and the run's metrics: runtime, tokens, losses, why it stopped."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from unsloth_sft.config.run import RunConfig
from unsloth_sft.config.train import best_metric_name, load_best
from unsloth_sft.core.errors import RunError, SFTError, TrainingFailed
from unsloth_sft.core.files import read_json
from unsloth_sft.runs.folder import RunDir
from unsloth_sft.runs.hub_resume import FROM_HUB
from unsloth_sft.training.distributed import gather, is_main_process, world_size


def train(cfg: RunConfig, trainer, resume_from: Path | None = None) -> dict[str, Any]:
    """Run training (resuming when given a checkpoint) and return the run's metrics as a plain dict."""
    from unsloth_sft.training.callbacks import MemoryCallback, nan_callback, start_hub_pushes  # imported late

    memory = next((c for c in trainer.callback_handler.callbacks if isinstance(c, MemoryCallback)), None)
    if memory is None:
        memory = MemoryCallback(verbose=is_main_process() and world_size() == 1)  # several: all ranks below
        trainer.add_callback(memory)
    nan = nan_callback() if cfg.train.stop_on_nan else None
    if nan is not None:
        trainer.add_callback(nan)
    pushes = start_hub_pushes(trainer, cfg, RunDir(cfg.run_dir))  # train.hub_strategy: the Trainer pushes each save
    resumed, hub = {}, None
    if resume_from is not None:
        resumed = json.loads((Path(resume_from) / "trainer_state.json").read_text())
        hub = read_json(Path(resume_from) / FROM_HUB)  # downloaded from the Hub on a fresh runtime (runs.hub_resume)
        if is_main_process():
            origin = f", pulled from the Hub: {hub['repo']} {hub['path']} at commit {hub['commit'][:8]}" if hub else ""
            print(f"Resuming from {resume_from} (step {resumed.get('global_step')}){origin}")
    done = resumed and cfg.train.max_steps is not None and int(resumed.get("global_step") or 0) >= cfg.train.max_steps
    stopped = (resumed.get("stateful_callbacks") or {}).get("TrainerControl", {}).get("args", {})
    done = done or bool(stopped.get("should_training_stop"))  # early stopping had ended it before the interruption
    if done:  # transformers 5.17, resumed at its last step, takes one step beyond max_steps: nothing is left to train
        output = restore_finished(trainer, Path(resume_from), load_best(cfg.train))
        memory.on_train_end(trainer.args, trainer.state, trainer.control)
    else:
        output = fit_or_explain(trainer, resume_from, RunDir(cfg.run_dir))
    if nan is not None and nan.bad_step is not None:
        raise RunError(
            f"loss became NaN/inf at step {nan.bad_step}; training stopped (last good checkpoint kept); "
            "lower train.learning_rate or check the data"
        )
    metrics = run_metrics(cfg, trainer, output, memory.report, resumed)
    metrics["resumed_from_hub"] = hub
    if pushes is not None:
        metrics["hub_pushes"] = pushes.finish()  # which went up, which failed (also the run's hub_pushes.json)
    metrics.update(stop_summary(cfg, trainer))
    metrics["memory_per_rank"] = gather(memory.report)  # collective: every rank reaches it after train()
    if is_main_process() and len(metrics["memory_per_rank"]) > 1:
        from unsloth_sft.training.callbacks import format_memory

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


def fit_or_explain(trainer, resume_from: Path | None, folder: RunDir | None = None):
    """trainer.train; a full disk while the Trainer writes a checkpoint (its own writer, not ours) becomes one line,
    and the half-written checkpoint goes: a rerun resumes from the last complete one. Any other crash (not a bad
    input) marks `folder` failed and becomes one TrainingFailed line naming the error and its traceback file."""
    from unsloth_sft.core.files import cannot_write, write_problem

    try:
        return trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except SFTError:
        raise  # a bad input found during training (data, a callback's config): already one line
    except Exception as err:  # OSError, torch's RuntimeError, safetensors' SafetensorError
        if write_problem(err) is None:
            raise training_failed(trainer, err, folder) from None  # the traceback is in the run folder
        checkpoints = Path(trainer.args.output_dir)
        for partial in checkpoints.glob("checkpoint-*"):
            if not (partial / "trainer_state.json").is_file():  # written last: without it, the save was cut
                shutil.rmtree(partial, ignore_errors=True)
        raise cannot_write(checkpoints, err) from None


def error_line(err: BaseException) -> str:
    """The error's type and the first line of its message ("InductorError: AssertionError: ..."), at most 300 chars."""
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "").rstrip(":")
    line = f"{type(err).__name__}: {first}" if first else type(err).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def training_failed(trainer, err: Exception, folder: RunDir | None = None) -> TrainingFailed:
    """Mark the run failed (failed.json, traceback.txt; rank 0) and say so in one line, with the fix when known."""
    import traceback

    from unsloth_sft.models.backends import compile_crash_hint

    folder = folder or RunDir(Path(trainer.args.output_dir).parent)  # output_dir is RUN/checkpoints
    state = trainer.state
    step, total = int(state.global_step or 0), (state.max_steps or None)
    summary = error_line(err)
    text = "".join(traceback.format_exception(err))
    where = folder.traceback_file
    if is_main_process():
        try:
            folder.mark_failed(summary, f"{type(err).__module__}.{type(err).__name__}", step, total, text)
        except Exception as unwritable:  # a full disk: the line still names the error, with the traceback below
            print(text, file=sys.stderr)
            where = f"not written: {error_line(unwritable)}; printed above"
    hint = compile_crash_hint(text)
    if hint is None and "OutOfMemoryError" in type(err).__name__:
        hint = "out of GPU memory; lower train.per_device_train_batch_size or model.max_seq_length"
    done = f"{step} of {total}" if total else str(step)
    return TrainingFailed(
        f"training failed after {done} steps: {summary}" + (f" ({hint})" if hint else "") + f"; traceback: {where}"
    )
