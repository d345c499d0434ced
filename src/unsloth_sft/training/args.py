"""TRL's SFTConfig from a run's config (names follow the upstream arguments one to one)."""

from __future__ import annotations

from pathlib import Path

from unsloth_sft.config.model import gradient_checkpointing
from unsloth_sft.config.run import RunConfig
from unsloth_sft.config.train import best_metric_name, eval_strategy, load_best
from unsloth_sft.models.backends import dtype_name
from unsloth_sft.training.distributed import is_main_process
from unsloth_sft.training.tracking import trackers


def cpu_bf16(cfg: RunConfig) -> bool:
    """bf16 mixed precision on a CPU: where model.dtype runs in bf16 (auto: a CPU with bf16 matmul units), autocast
    over the bf16 weights; LoRA's master weights and the optimizer state stay fp32. train.bf16 overrides."""
    return dtype_name(cfg.model.dtype) == "bfloat16" if cfg.train.bf16 is None else cfg.train.bf16


def sft_config(cfg: RunConfig, output_dir: Path, backend: str | None = None):
    """TRL's SFTConfig for a run (names follow the upstream arguments one to one)."""
    import torch
    from trl import SFTConfig

    t = cfg.train
    cuda = torch.cuda.is_available()
    bf16 = (torch.cuda.is_bf16_supported() if t.bf16 is None else t.bf16) if cuda else cpu_bf16(cfg)
    strategy = eval_strategy(t)
    best = load_best(t)
    # the best checkpoint must exist when load_best_model_at_end reloads it: save at every evaluation
    save_strategy = strategy if best else ("steps" if t.save_steps else "no")
    save_steps = (t.save_steps or t.eval_steps or 500) if best else (t.save_steps or 500)
    return SFTConfig(
        output_dir=str(output_dir),
        run_name=cfg.run_name,
        # padding-free without packing: TRL refuses a max_length it would not enforce; data/tokenize.py already cut rows
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
        **hub_args(cfg),
    )


def hub_args(cfg: RunConfig) -> dict:
    """The Trainer's Hub arguments for train.hub_strategy (every_save, checkpoint, all_checkpoints; `end` is the final
    export's push). push_to_hub stays off here: training.hub_push turns it on once the repo is there (in the Trainer's
    constructor a Hub that cannot be reached would stop the run). No hub_token: the Trainer pickles its arguments into
    every checkpoint (training_args.bin, pushed too); huggingface_hub reads HF_TOKEN or the login cache itself."""
    t = cfg.train
    if t.hub_strategy in (None, "end"):
        return {}
    return {
        "hub_model_id": cfg.export.push_to_hub,
        "hub_strategy": t.hub_strategy,
        "hub_private_repo": cfg.export.private,
        # each save goes up, queued behind the one still uploading (the Trainer's default skips that save)
        "hub_always_push": True,
    }
