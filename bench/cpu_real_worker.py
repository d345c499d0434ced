"""The real-model CPU benchmark's variants, and what its worker processes run: one variant's training steps on
the recipe's first examples, the matmul peak, the base model's held-out loss. The driver is `bench.cpu_real`
(`python -m bench.cpu_real --worker ...`)."""

from __future__ import annotations

import time

T0 = time.time()  # set before any heavy import: time-to-first-step counts imports, loading and data preparation

import os  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from bench.common import ROOT, load_model, matmul_peak, train_flops  # noqa: E402
from bench.cpu_common import (  # noqa: E402
    Clock,
    TokenCounter,
    model_loss_trainer,
    naive_rows,
    plain_trl_trainer,
    run_each,
    summed,
)

# Gemma-3 270M with its CPU recipe.
RECIPE = ROOT / "params" / "cpu" / "gemma3-270m-hindi-summarization.yaml"
MODEL = "gemma-3-270m"  # the packaged GGUF, converted once into the cache (~2 min)
SMOKE_MODEL = "tiny-gemma2"  # --smoke: the same variants on the library's tiny model, in seconds
STEPS, WARMUP = 3, 1  # timed optimizer steps after untimed warm-up ones: ~20-60 s a step on one core
EVAL_EXAMPLES = 8  # held-out examples scored (completion-only loss) after each variant, and on the base model
PEAK_SIZE, PEAK_REPS = 2048, 5  # torch.mm of 2048 x 2048 matrices, best of 5 after one warm-up
PEAK_REPS_BF16 = 2  # bfloat16 (measured only when a variant trains in it): ~1 GFLOP/s on AVX2, ~17 s a rep
VARIANTS = {
    # name: (what it is, the backend the library loads it with; None: plain TRL loads the model itself)
    "pipeline-unsloth": (
        "this pipeline as the recipe runs it (backend auto picks unsloth): load_base + add_lora + prepare + "
        "build_trainer, completion-only labels, logits only at trained positions",
        "unsloth",
    ),
    "pipeline": ("this pipeline with model.backend transformers (peft, float32)", "transformers"),
    "pipeline-full-logits": (
        "`pipeline` with the trainer's loss on full logits (transformers.Trainer.compute_loss): trained-position "
        "logits off, everything else the same",
        "transformers",
    ),
    "trl": (
        "plain TRL: SFTTrainer defaults (gradient checkpointing on, loss on every token) on the rendered text, "
        "peft LoRA as the recipe's, the model's full-logits loss (TRL's own needs Triton)",
        None,
    ),
    "trl-no-checkpointing": ("`trl` with gradient_checkpointing=False (the recipe turns it off)", None),
    "naive": (
        "every example padded to max_seq_length 512, loss on every real token (prompt too), full logits, "
        "random order; transformers backend",
        "transformers",
    ),
}


def trl_settings(t, total_steps: int) -> dict:
    """The recipe's optimiser, batch and schedule as SFTConfig keys for plain TRL; the rest is TRL's defaults."""
    return {
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "max_steps": total_steps,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler_type,
        "warmup_steps": t.warmup_steps,
        "weight_decay": t.weight_decay,
        "optim": t.optim,
        "logging_steps": 1,
        "seed": t.seed,
        "data_seed": t.seed,
    }


def recipe_config(variant: str, model: str, steps: int, out_dir: Path):
    """The recipe's RunConfig for a real-model variant: `steps` optimizer steps, no warm-up of the learning rate."""
    from unsloth_sft.config.load import load_config

    backend = VARIANTS[variant][1] or "transformers"
    overrides = [
        f"output_dir={out_dir}",
        "run_name=bench-real",
        f"model.name={model}",
        f"model.backend={backend}",
        f"train.max_steps={steps}",
        "train.warmup_steps=0",  # the recipe's 4 warm-up steps would leave a 4-step run's first step at lr 0
        "train.logging_steps=1",
    ]
    if variant == "naive":
        overrides.append("train.group_by_length=false")
    return load_config(RECIPE, overrides=overrides)


def uses_unsloth(variant: str) -> bool:
    """Whether the variant loads unsloth, which patches transformers and TRL for the rest of its process."""
    return VARIANTS[variant][1] == "unsloth"


def trained_positions_used(variant: str) -> bool:
    """Whether the variant's trainer is the library's, which on a CPU computes logits only at trained positions."""
    return variant in ("pipeline", "pipeline-unsloth")


def model_dims(model) -> dict:
    """Vocabulary, hidden size, non-embedding parameters (LoRA included) and the dtype most parameters have."""
    from collections import Counter

    head = model.get_output_embeddings().weight
    embed = model.get_input_embeddings().weight
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    tied = head.data_ptr() == embed.data_ptr()
    nonembed = total - embed.numel() - (0 if tied else head.numel())
    by_dtype: Counter = Counter()
    for p in params:
        by_dtype[str(p.dtype).removeprefix("torch.")] += p.numel()
    return {
        "vocab": head.shape[0],
        "hidden": head.shape[1],
        "nonembed_params": nonembed,
        "total_params": total,
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "tied_embeddings": tied,
        "dtype": by_dtype.most_common(1)[0][0],
    }


def recipe_examples(cfg, steps: int, eval_examples: int):
    """The recipe's examples cut to one epoch of `steps` optimizer steps and `eval_examples` held-out ones."""
    import dataclasses

    from unsloth_sft.data.examples import load_examples

    t = cfg.train
    examples = load_examples(cfg)
    n = steps * t.per_device_train_batch_size * t.gradient_accumulation_steps
    if len(examples.train_conversations) < n:
        raise ValueError(f"{cfg.data.source} has {len(examples.train_conversations)} training examples, need {n}")
    return dataclasses.replace(
        examples,
        train_conversations=examples.train_conversations[:n],
        test_conversations=examples.test_conversations[:eval_examples],
    )


def plain_model(cfg):
    """Tokenizer and model straight from transformers (float32, as the `pipeline` variant loads it), no LoRA."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unsloth_sft.models.sources import resolve_model_path

    path = resolve_model_path(cfg.model.name)
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def first_decoder_layer(model):
    """The first transformer block (a `...DecoderLayer`) of a model, however it is wrapped."""
    return next(m for m in model.modules() if type(m).__name__.endswith("DecoderLayer"))


def run_variant(variant: str, model: str, steps: int, warmup: int, eval_examples: int, threads: int = 1) -> dict:
    """Train one real-model variant for warmup + steps optimizer steps on the recipe's first examples."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    backend = VARIANTS[variant][1]
    if backend == "unsloth":
        import unsloth  # noqa: F401  (first: it patches transformers, trl and peft)
    import shutil

    import datasets
    import torch

    from unsloth_sft.data.examples import prepare
    from unsloth_sft.data.prompts import render
    from unsloth_sft.evaluation.loss import eval_loss
    from unsloth_sft.training.callbacks import peak_rss_mb
    from unsloth_sft.training.loop import train
    from unsloth_sft.training.trainer import build_trainer

    torch.set_num_threads(threads)
    t_imports = time.time()
    total_steps = warmup + steps
    out_dir = Path(tempfile.mkdtemp(prefix="unsloth-sft-bench-real-"))
    cfg = recipe_config(variant, model, total_steps, out_dir)
    t = cfg.train
    examples = recipe_examples(cfg, total_steps, eval_examples)
    plain_trl = backend is None
    if plain_trl:
        tokenizer, model_obj = plain_model(cfg)
        loaded_backend = "transformers"
    else:
        loaded = load_model(cfg)
        model_obj, tokenizer, loaded_backend = loaded.model, loaded.tokenizer, loaded.backend
    t_load = time.time()
    rss = {"load": peak_rss_mb()}  # the peak so far after each phase: where the peak was reached
    data = prepare(cfg, tokenizer, examples)  # training rows, and the held-out rows every variant is scored on
    clock = Clock()
    callbacks = [clock.callback()]
    if plain_trl:
        texts = [render(tokenizer, c, data.template).text for c in examples.train_conversations]
        settings = trl_settings(t, total_steps)  # the recipe's optimiser, so that losses compare
        if variant == "trl-no-checkpointing":
            settings["gradient_checkpointing"] = False
        trainer = plain_trl_trainer(model_obj, tokenizer, texts, out_dir, callbacks, lora=cfg.lora, **settings)
    elif variant == "naive":
        rows = naive_rows(tokenizer, examples.train_conversations, cfg, data.template, cfg.model.max_seq_length)
        trainer = model_loss_trainer(
            cfg, model_obj, tokenizer, datasets.Dataset.from_dict(rows), callbacks, loaded_backend
        )
    elif variant == "pipeline-full-logits":
        trainer = model_loss_trainer(cfg, model_obj, tokenizer, data.train, callbacks, loaded_backend)
    else:
        trainer = build_trainer(cfg, model_obj, tokenizer, data.train, callbacks=callbacks, backend=loaded_backend)
    t_trainer = time.time()
    counter = TokenCounter(trainer.data_collator, tokenizer.pad_token_id, trained_positions_used(variant))
    trainer.data_collator = counter
    head_rows: list[int] = []  # rows the output projection actually saw: checks the logits count below
    layer_calls: list[int] = []  # forwards of the first decoder layer: 2 per step when checkpointing recomputes
    hooks = [
        trainer.model.get_output_embeddings().register_forward_hook(
            lambda module, args, output: head_rows.append(args[0].shape[:-1].numel())
        ),
        # a pre-hook: torch's non-reentrant checkpointing stops its recomputation before a forward hook would run
        first_decoder_layer(trainer.model).register_forward_pre_hook(lambda *_: layer_calls.append(1)),
    ]
    torch.manual_seed(0)
    if plain_trl:
        trainer.train()
    else:
        train(cfg, trainer)
    for hook in hooks:
        hook.remove()
    t_train = time.time()
    rss["train"] = peak_rss_mb()
    loss_after = eval_loss(trainer.model, tokenizer, data.test, cfg.eval.batch_size) if eval_examples else None
    t_done = time.time()
    shutil.rmtree(out_dir, ignore_errors=True)

    accum = t.gradient_accumulation_steps
    done = trainer.state.global_step
    batches = counter.per_batch[: done * accum]  # a data loader may have drawn one batch more
    timed = summed(batches[warmup * accum :])
    all_steps = summed(batches)
    if warmup and len(clock.step_ends) > warmup:
        start_wall, start_cpu = clock.step_ends[warmup - 1]
    else:
        start_wall, start_cpu = clock.begin, clock.cpu_begin
    end_wall, end_cpu = clock.step_ends[-1]
    timed_steps = done - (warmup if len(clock.step_ends) > warmup else 0)
    wall_s, cpu_s = end_wall - start_wall, end_cpu - start_cpu
    dims = model_dims(trainer.model)
    flops = train_flops(
        timed.get("real", 0), timed.get("logits", 0), dims["nonembed_params"], dims["vocab"], dims["hidden"]
    )
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "variant": variant,
        "model": model,
        "backend": loaded_backend,
        "trainer": type(trainer).__name__,
        "trained_positions": trained_positions_used(variant),
        **dims,
        "steps": done,
        "warmup_steps": done - timed_steps,
        "timed_steps": timed_steps,
        "examples": len(examples.train_conversations),
        "batch": f"{t.per_device_train_batch_size} x {accum}",
        "real_tokens": timed.get("real", 0),
        "slots": timed.get("slots", 0),
        "supervised_tokens": timed.get("supervised", 0),
        "logits_positions": timed.get("logits", 0),
        "padding_fraction": round(1 - timed["real"] / timed["slots"], 4) if timed.get("slots") else None,
        "logits_fraction": round(timed["logits"] / timed["real"], 4) if timed.get("real") else None,
        "lm_head_rows": sum(head_rows),  # measured over every step (forward hook on the output projection)
        "logits_slots": all_steps.get("logits_slots", 0),  # the same, counted from the batches
        "timed_s": round(wall_s, 2),
        "timed_cpu_s": round(cpu_s, 2),
        "s_per_step": round(wall_s / timed_steps, 2) if timed_steps else None,
        "cpu_s_per_step": round(cpu_s / timed_steps, 2) if timed_steps else None,
        "tokens_per_s": round(timed["real"] / wall_s, 2) if timed_steps else None,
        "tokens_per_cpu_s": round(timed["real"] / cpu_s, 2) if timed_steps else None,
        "flops": flops,
        "gflops_per_s": round(flops / wall_s / 1e9, 3) if timed_steps else None,
        "gflops_per_cpu_s": round(flops / cpu_s / 1e9, 3) if timed_steps else None,
        "step_losses": losses,
        "last_loss": losses[-1] if losses else None,
        "eval_examples": len(data.test) if data.test is not None else 0,
        "eval_loss_after": round(loss_after, 5) if loss_after is not None else None,
        "peak_rss_mb": rss["train"],  # loading, data and training; the held-out scoring after it is not counted
        "peak_rss_mb_by_phase": {**rss, "eval_after": peak_rss_mb()},  # ru_maxrss after load, train, eval
        "gradient_checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False)),
        "layer_forwards_per_step": round(len(layer_calls) / (done * accum), 2) if done else None,  # 2: recomputed
        "threads": torch.get_num_threads(),
        "imports_s": round(t_imports - T0, 2),
        "load_s": round(t_load - t_imports, 2),
        "prep_s": round(t_trainer - t_load, 2),
        "eval_s": round(t_done - t_train, 2),
        "time_to_first_step_s": round(clock.first_step - T0, 2),
        "run_s": round(t_done - T0, 2),
        "description": VARIANTS[variant][0],
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def run_variants(variants: list[str], model: str, steps: int, warmup: int, eval_examples: int, threads: int = 1):
    """`run_variant` for each variant (`cpu_common.run_each`: one raises, several record each failure and go on)."""
    return run_each(variants, lambda variant: run_variant(variant, model, steps, warmup, eval_examples, threads))


def run_peak(threads: int, size: int, reps: int, dtypes: list[str]) -> dict:
    """The matmul peak of this machine with `threads` torch threads, for each of `dtypes`."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    out = {dtype: matmul_peak(dtype, size, reps) for dtype in dtypes}
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return out


def run_base_eval(model: str, eval_examples: int, threads: int) -> dict:
    """The held-out loss of the base model (LoRA starts at zero: where every variant starts), in its own process
    so that scoring does not raise a variant's peak RSS."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import shutil

    import torch

    from unsloth_sft.data.examples import prepare
    from unsloth_sft.evaluation.loss import eval_loss

    torch.set_num_threads(threads)
    out_dir = Path(tempfile.mkdtemp(prefix="unsloth-sft-bench-real-"))
    cfg = recipe_config("pipeline", model, 1, out_dir)
    tokenizer, base = plain_model(cfg)
    data = prepare(cfg, tokenizer, recipe_examples(cfg, 1, eval_examples))
    loss = eval_loss(base, tokenizer, data.test, cfg.eval.batch_size)
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"model": model, "eval_examples": len(data.test), "eval_loss": round(loss, 5) if loss is not None else None}
