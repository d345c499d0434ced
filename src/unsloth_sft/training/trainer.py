"""The SFTTrainer a run trains with: TRL's (or unsloth's), with a CPU loss that computes logits at trained positions only."""

from __future__ import annotations

from unsloth_sft.config.run import RunConfig
from unsloth_sft.runs.folder import CHECKPOINTS, ENVIRONMENT
from unsloth_sft.training.args import sft_config
from unsloth_sft.training.tracking import config_callback, tracker_env, trackers


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
    kept; only the logits it sees shrink. bench/cpu_synthetic.py measures the difference.
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
    from unsloth_sft.training.callbacks import ComputeDtype

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
    show_progress(trainer)
    trainer.add_callback(ComputeDtype(cfg.run_dir / ENVIRONMENT))  # for the run report's environment
    return trainer


def show_progress(trainer) -> None:
    """Our step lines (loss, tok/s, ETA) instead of the Trainer's bar (its HTML table in a notebook, interactive or
    papermill) and its raw log dicts; theirs too with --verbose."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback

    from unsloth_sft.core.quiet import is_verbose
    from unsloth_sft.training.callbacks import StepProgress

    if not is_verbose():
        for theirs in (ProgressCallback, NotebookProgressCallback, PrinterCallback):
            trainer.remove_callback(theirs)
    trainer.add_callback(StepProgress())
