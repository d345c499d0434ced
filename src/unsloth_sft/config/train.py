"""The train section (SFTConfig's arguments, evaluation during training, early stopping), and its rules."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Literal

from pydantic import BeforeValidator
from pydantic.dataclasses import dataclass

from unsloth_sft.config.types import (
    STRICT,
    Count,
    EvalMetric,
    Fraction,
    Layers,
    Names,
    NonNegative,
    NonNegativeNumber,
    Positive,
    Scheduler,
    _yaml11_no,
)
from unsloth_sft.core.errors import ConfigError


@dataclass(config=STRICT)
class TrainConfig:
    max_steps: Count | None = 60  # optimizer steps; None to train by num_train_epochs
    num_train_epochs: Positive | None = None  # used only when max_steps is None
    per_device_train_batch_size: Count = 2  # examples per forward pass and process
    gradient_accumulation_steps: Count = 4  # effective batch = batch x accumulation x processes
    learning_rate: Positive = 2e-4  # LoRA: 1e-4..3e-4; full fine-tuning: ~1e-5
    warmup_steps: NonNegative = 5  # linear warm-up from 0 to learning_rate
    warmup_ratio: Fraction | None = None  # warm-up as a fraction of all steps (e.g. 0.03); replaces warmup_steps
    lr_scheduler_type: Scheduler = "linear"  # transformers' scheduler names: cosine, constant, ...
    optim: str = "adamw_8bit"  # bitsandbytes 8-bit AdamW; "adamw_torch" where bnb is missing
    weight_decay: NonNegativeNumber = 0.01  # AdamW decoupled weight decay
    max_grad_norm: NonNegativeNumber = 1.0  # gradient clipping; 0 = off
    neftune_noise_alpha: Positive | None = None  # NEFTune embedding noise (paper: 5); None = off
    seed: int = 3407  # weights init (LoRA), data order, dropout
    logging_steps: Count = 1  # log the loss every N optimizer steps
    save_steps: Count | None = None  # checkpoint every N steps; None: no intermediate checkpoints
    save_total_limit: Count = 2  # keep the newest N checkpoints
    # "auto": the newest complete checkpoint in the run folder, else the last-checkpoint/ that train.hub_strategy
    # pushed to export.push_to_hub (a fresh runtime); "never"; or a checkpoint path
    resume: str = "auto"
    # push to export.push_to_hub while training (the Trainer's hub_strategy): every_save (the weights at each save),
    # checkpoint (also the whole checkpoint as last-checkpoint/: what resume: auto takes on a new runtime),
    # all_checkpoints (each checkpoint-N/), end (only the final export's push); None = no push while training
    hub_strategy: Literal["end", "every_save", "checkpoint", "all_checkpoints"] | None = None
    packing: bool = False  # pack rows into max_seq_length; pays off with flash-attention (GPU), slower on CPU
    padding_free: bool = False  # no pad tokens at all; needs flash-attention-style kernels on GPU
    group_by_length: bool = True  # batch similar lengths together: padding 14.5% -> 1.4%, +45% tok/s (bench/)
    bf16: bool | None = None  # None: on when the GPU supports it; on a CPU, when model.dtype runs in bfloat16
    compile: bool | Literal["auto"] = "auto"  # CPU: torch.compile per decoder layer; auto: on for a bf16 model >= 50M
    report_to: Names = field(default_factory=lambda: ["none"])  # tensorboard, wandb, mlflow ...
    dataset_num_proc: Count | None = None  # processes for tokenization; None = in-process
    ddp_find_unused_parameters: bool = False  # LoRA leaves no unused parameters: False is faster
    stop_on_nan: bool = True  # stop with the step number when the loss is NaN/inf
    # evaluation during training (eval loss on the test split; the Trainer's own evaluation loop)
    eval_strategy: Annotated[Literal["auto", "no", "steps", "epoch"], BeforeValidator(_yaml11_no)] = (
        "auto"  # auto: "steps" when eval_steps is set, else no
    )
    eval_steps: Count | None = None  # evaluate every N optimizer steps
    eval_on_start: bool = False  # also evaluate before the first step (a baseline point on the curve)
    per_device_eval_batch_size: Count | None = None  # None = per_device_train_batch_size (a forward that fits)
    eval_metric: EvalMetric | None = None  # also generate and score eval_samples test examples at each evaluation
    eval_samples: Count = 16  # test examples generated for eval_metric (greedy, eval.max_new_tokens)
    # early stopping and the best checkpoint (transformers' EarlyStoppingCallback, load_best_model_at_end)
    early_stopping_patience: Count | None = None  # stop after N evaluations without improvement; None = off
    early_stopping_threshold: NonNegativeNumber = 0.0  # an improvement must beat the best by more than this
    metric_for_best_model: str = "loss"  # "loss" (eval loss) or train.eval_metric's name
    greater_is_better: bool | None = None  # None: False for a loss, True for any other metric
    load_best_model_at_end: bool | None = None  # None: on with early stopping; the adapter/merged model = best step
    # freezing for finetune: full (LoRA: see lora.layers_to_transform)
    freeze: Names = field(default_factory=list)  # groups (embeddings, norms, attention, mlp, lm_head) or name globs
    trainable_layers: Layers = None  # decoder layers left trainable ("20-", [0, 1]); the others are frozen


def check_train(t: TrainConfig) -> None:
    """A run needs a length: steps or epochs."""
    if t.max_steps is None and t.num_train_epochs is None:
        raise ConfigError(
            "train.max_steps and train.num_train_epochs are both unset; set one (e.g. train.max_steps=60)"
        )


def check_hub_strategy(t: TrainConfig, push_to_hub: str | None) -> None:
    """train.hub_strategy pushes to export.push_to_hub, at each save."""
    if t.hub_strategy is None:
        return
    if push_to_hub is None:
        raise ConfigError(
            f"train.hub_strategy {t.hub_strategy} pushes to export.push_to_hub, which is unset; "
            "set export.push_to_hub: user/repo, or remove train.hub_strategy"
        )
    if t.hub_strategy != "end" and save_strategy(t) == "no":
        raise ConfigError(
            f"train.hub_strategy {t.hub_strategy} pushes at each save, but nothing is saved during training; "
            "set train.save_steps (e.g. 50)"
        )


def save_strategy(t: TrainConfig) -> str:
    """The Trainer's save_strategy: at each evaluation when the best checkpoint is loaded at the end, else every
    train.save_steps, else no."""
    return eval_strategy(t) if load_best(t) else ("steps" if t.save_steps else "no")


def eval_strategy(t: TrainConfig) -> str:
    """The Trainer's eval_strategy: "auto" evaluates every eval_steps when that is set."""
    if t.eval_strategy == "auto":
        return "steps" if t.eval_steps else "no"
    return t.eval_strategy


def load_best(t: TrainConfig) -> bool:
    """load_best_model_at_end as it will run: on with early stopping unless set."""
    return t.early_stopping_patience is not None if t.load_best_model_at_end is None else t.load_best_model_at_end


def best_metric_name(t: TrainConfig) -> str:
    """metric_for_best_model as the Trainer's eval log names it (eval_loss, eval_rougeL ...)."""
    name = t.metric_for_best_model
    return name if name.startswith("eval_") else f"eval_{name}"


def check_eval_during_training(t: TrainConfig) -> None:
    """Evaluation during training, early stopping and the best checkpoint agree with each other."""
    strategy = eval_strategy(t)
    if strategy == "steps" and t.eval_steps is None:
        raise ConfigError("train.eval_strategy is steps but train.eval_steps is unset; set it (e.g. 10)")
    if strategy == "no":
        for key, on in (
            ("eval_steps", t.eval_steps is not None),
            ("eval_on_start", t.eval_on_start),
            ("eval_metric", t.eval_metric is not None),
            ("early_stopping_patience", t.early_stopping_patience is not None),
            ("load_best_model_at_end", bool(t.load_best_model_at_end)),
            ("lr_scheduler_type reduce_lr_on_plateau", t.lr_scheduler_type == "reduce_lr_on_plateau"),
        ):
            if on:
                raise ConfigError(
                    f"train.{key} needs evaluation during training, but train.eval_strategy is no; "
                    "set train.eval_steps (e.g. 10) or train.eval_strategy: epoch"
                )
    metric = best_metric_name(t)
    known = ["eval_loss"] + ([f"eval_{t.eval_metric}"] if t.eval_metric else [])
    if metric not in known:
        raise ConfigError(
            f"train.metric_for_best_model '{t.metric_for_best_model}' is not computed during training; use loss"
            + (f" or {t.eval_metric}" if t.eval_metric else ", or set train.eval_metric (e.g. rougeL) and name it")
        )
    if t.early_stopping_patience is not None and not load_best(t):
        raise ConfigError(
            "train.early_stopping_patience with train.load_best_model_at_end false would export the last, not the "
            "best, step; remove load_best_model_at_end: false"
        )
    if load_best(t) and strategy == "steps" and t.save_steps and t.save_steps % t.eval_steps:
        raise ConfigError(
            f"train.save_steps {t.save_steps} is not a multiple of train.eval_steps {t.eval_steps}; the best "
            "checkpoint must be saved when it is evaluated: unset save_steps or make it a multiple"
        )
