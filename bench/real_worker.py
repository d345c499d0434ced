"""What `python -m bench real`'s worker processes run: one variant's training steps, or the matmul peak."""

from __future__ import annotations

import time

T0 = time.time()  # before any heavy import: time to the first step counts imports, loading and data preparation

import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from bench.common import matmul_peak, train_flops  # noqa: E402
from bench.cpu_common import Clock, TokenCounter, model_loss_trainer, plain_trl_trainer, summed  # noqa: E402
from bench.cpu_real_worker import RECIPE, model_dims, plain_model, recipe_examples, trl_settings  # noqa: E402

DESCRIPTIONS = {
    "recipe": "the recipe as `unsloth-sft train` runs it: the CLI's allocator and threads, backend auto, "
    "train.compile auto, the lean loss (each example's trained positions, chunked head + cross-entropy)",
    "trl": "plain TRL: SFTTrainer defaults on the same rendered text (loss on every token, gradient checkpointing), "
    "peft LoRA as the recipe's, the same examples and steps, the model's own loss on full logits, float32",
    "recipe-slow": "the recipe's settings, eager (train.compile false), glibc's default malloc, the model's own "
    "loss on full logits (transformers.Trainer.compute_loss): the slow path the lean loss must match",
}


def config(variant: str, model: str, total_steps: int, out_dir: Path, compile_setting: str | None = None):
    """The recipe's RunConfig for `total_steps` optimizer steps (no learning-rate warm-up: a 4-step run would sit at
    ~0) with the loss logged every step; recipe-slow is eager."""
    from unsloth_sft.config.load import load_config

    overrides = [
        f"output_dir={out_dir}",
        "run_name=bench-real",
        f"model.name={model}",
        f"train.max_steps={total_steps}",
        "train.warmup_steps=0",
        "train.logging_steps=1",
    ]
    if variant == "recipe-slow":
        overrides.append("train.compile=false")
    elif compile_setting:
        overrides.append(f"train.compile={compile_setting}")
    return load_config(RECIPE, overrides=overrides)


def run_peak(args) -> dict:
    """The best of `args.peak_reps` torch.mm of 2048 x 2048 in the compute dtype on `args.threads` threads."""
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    return {**matmul_peak(args.dtype, 2048, args.peak_reps), "load_average": [round(x, 2) for x in os.getloadavg()]}


def run_variant(args) -> dict:
    """Train one variant for warmup + steps optimizer steps; its measurements."""
    variant = args.variant
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the same threads for every variant
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    malloc = {}
    if variant == "recipe":  # what the CLI's main does first (`unsloth-sft train`)
        from unsloth_sft.core.allocator import tune_cpu

        malloc = tune_cpu()
    from unsloth_sft.models.backends import import_backend

    work = Path(tempfile.mkdtemp(prefix="bench-real-"))
    cfg = config(variant, args.model, args.warmup_steps + args.steps, work, args.compile)
    backend = None if variant == "trl" else import_backend(cfg.model.backend)  # unsloth first, as the CLI
    import torch

    from unsloth_sft.data.examples import prepare
    from unsloth_sft.data.prompts import render
    from unsloth_sft.training.callbacks import peak_rss_mb
    from unsloth_sft.training.loop import train
    from unsloth_sft.training.outputs import compute_dtype
    from unsloth_sft.training.trainer import build_trainer

    torch.set_num_threads(args.threads)
    t = cfg.train
    total = args.warmup_steps + args.steps
    examples = recipe_examples(cfg, total, 0)
    if backend is None:
        tokenizer, model = plain_model(cfg)
    else:
        from bench.common import load_model

        loaded = load_model(cfg)
        model, tokenizer, backend = loaded.model, loaded.tokenizer, loaded.backend
    data = prepare(cfg, tokenizer, examples)
    clock = Clock()
    if variant == "trl":
        texts = [render(tokenizer, c, data.template).text for c in examples.train_conversations]
        settings = trl_settings(t, total)  # the recipe's optimiser and batch, so that the runs compare
        trainer = plain_trl_trainer(model, tokenizer, texts, cfg.run_dir, [clock.callback()], lora=cfg.lora, **settings)
    elif variant == "recipe-slow":
        trainer = model_loss_trainer(cfg, model, tokenizer, data.train, [clock.callback()], backend)
    else:
        trainer = build_trainer(cfg, model, tokenizer, data.train, callbacks=[clock.callback()], backend=backend)
    counter = TokenCounter(trainer.data_collator, tokenizer.pad_token_id)
    trainer.data_collator = counter
    torch.manual_seed(0)
    if variant == "trl":
        trainer.train()
    else:
        train(cfg, trainer)
    rss = peak_rss_mb()
    shutil.rmtree(cfg.run_dir.parent, ignore_errors=True)

    accum, done, warmup = t.gradient_accumulation_steps, trainer.state.global_step, args.warmup_steps
    timed = summed(counter.per_batch[warmup * accum : done * accum])  # a loader may draw one batch more
    start = clock.step_ends[warmup - 1] if warmup else (clock.begin, clock.cpu_begin)
    wall, cpu = clock.step_ends[-1][0] - start[0], clock.step_ends[-1][1] - start[1]
    dims = model_dims(trainer.model)
    # logits are needed where a label is trained: the recipe's answer tokens, every token for plain TRL
    flops = train_flops(timed["real"], timed["supervised"], dims["nonembed_params"], dims["vocab"], dims["hidden"])
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "variant": variant,
        "description": DESCRIPTIONS[variant],
        "backend": backend or "transformers (plain TRL)",
        "trainer": type(trainer).__name__,
        "compute_dtype": compute_dtype(trainer.model, trainer.args),
        "compile": any(type(c).__name__ == "CompileLayers" for c in trainer.callback_handler.callbacks),
        "malloc": malloc,
        "threads": torch.get_num_threads(),
        **dims,
        "steps": done,
        "timed_steps": done - warmup,
        "real_tokens": timed["real"],
        "supervised_tokens": timed["supervised"],
        "timed_s": round(wall, 3),
        "timed_cpu_s": round(cpu, 3),
        "tokens_per_s": round(timed["real"] / wall, 2),
        "tokens_per_cpu_s": round(timed["real"] / cpu, 2),
        "flops": flops,
        "step_losses": losses,
        "final_loss": losses[-1],
        "peak_rss_mb": rss,
        "s_to_first_step": round(clock.first_step - T0, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
