"""The synthetic CPU benchmark's variants, and what its worker processes run: one variant's training pass, the
data-preparation timing. The driver is `bench.cpu_synthetic` (`python -m bench.cpu_synthetic --worker ...`)."""

from __future__ import annotations

import time

T0 = time.time()  # set before any heavy import: time-to-first-step counts imports, loading and data preparation

import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from bench.common import SMALL_NAME, SMALL_SHAPE, build_random_model, load_model  # noqa: E402
from bench.cpu_common import (  # noqa: E402
    ACCUM,
    BATCH,
    MAX_LENGTH,
    Clock,
    TokenCounter,
    bench_conversations,
    model_loss_trainer,
    naive_rows,
    plain_trl_trainer,
    run_each,
)

VARIANTS = {
    # name: (what it is, the library's own options on top of bench_config, as dotted overrides; None: not the library)
    "pipeline": (
        "unsloth_sft: completion-only labels, padded to the batch's longest, random order",
        ["train.group_by_length=false"],
    ),
    "pipeline-grouped": (
        "unsloth_sft, train.group_by_length: true (the library's default)",
        ["train.group_by_length=true"],
    ),
    "pipeline-padding-free": ("unsloth_sft, train.padding_free: true", ["train.padding_free=true"]),
    "pipeline-packing": ("unsloth_sft, train.packing: true (TRL bfd; implies padding-free)", ["train.packing=true"]),
    "naive": ("every example padded to max_length, loss on every real token (prompt too)", None),
    "trl": ("plain TRL: SFTTrainer defaults on a `text` field, peft_config LoRA", None),
    "pipeline-unsloth": (
        "unsloth_sft, model.backend unsloth (what backend auto picks here), random order",
        ["model.backend=unsloth", "train.group_by_length=false"],
    ),
    "pipeline-no-checkpointing": (
        "unsloth_sft defaults without gradient checkpointing (not in the default run)",
        ["lora.use_gradient_checkpointing=false"],
    ),
}
DEFAULT_VARIANTS = [
    "pipeline",
    "pipeline-grouped",
    "pipeline-padding-free",
    "pipeline-packing",
    "pipeline-unsloth",
    "naive",
    "trl",
]
QUICK_VARIANTS = ["pipeline", "pipeline-grouped", "pipeline-unsloth", "naive", "trl"]
MODELS = ("tiny", "small")
# Examples per variant: one pass (1 epoch) over the same examples for every variant of a model.
EXAMPLES = {"tiny": 160, "small": 24}  # ~56k / ~8k tokens: ~10-25 s of training per variant on one core
QUICK_EXAMPLES = {"tiny": 64, "small": 16}
PARTS_EXAMPLES = 5_000  # the parts of data preparation are timed on this many (warm), the whole on all
PREP_EXAMPLES = 20_000
SMOKE_EXAMPLES = BATCH * ACCUM  # one optimizer step


# ---------------------------------------------------------------- models


def model_path(model: str) -> Path:
    """The tiny Gemma-2 of the library, or the ~14M random-init Gemma-2 built beside it in the cache."""
    from unsloth_sft.core.paths import cache_root
    from unsloth_sft.models.tiny import tiny_model_path

    tiny = tiny_model_path()
    if model == "tiny":
        return tiny
    return build_random_model(cache_root() / f"{SMALL_NAME}-{tiny.name.rsplit('-', 1)[-1]}", SMALL_SHAPE, tiny)


# ---------------------------------------------------------------- one variant


def bench_config(variant: str, path: Path, out_dir: Path):
    """The RunConfig of a variant: 16-bit LoRA r16 on all linear layers, one epoch, plus the variant's own options."""
    from unsloth_sft.config.load import load_config

    overrides = [
        f"output_dir={out_dir}",
        "run_name=bench",
        f"model.name={path}",
        "model.backend=transformers",
        "model.load_in_4bit=false",  # bitsandbytes' CPU NF4 kernels dequantise per matmul: ~3x slower, same for all
        f"model.max_seq_length={MAX_LENGTH}",
        "train.max_steps=null",
        "train.num_train_epochs=1",
        f"train.per_device_train_batch_size={BATCH}",
        f"train.gradient_accumulation_steps={ACCUM}",
        "train.optim=adamw_torch",  # bitsandbytes' 8-bit AdamW is a GPU optimiser
        "train.warmup_steps=0",
        "data.task=chat",
    ]
    return load_config(overrides=overrides + (VARIANTS[variant][1] or []))


def uses_unsloth(variant: str) -> bool:
    """Whether the variant loads unsloth, which patches transformers and TRL for the rest of its process."""
    return "model.backend=unsloth" in (VARIANTS[variant][1] or [])


def run_variant(variant: str, model: str, n: int, threads: int = 1) -> dict:
    """Train one pass of `n` examples with one variant; return its measurements."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # before torch is imported
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import datasets
    import torch

    from unsloth_sft.data.prompts import render
    from unsloth_sft.data.tokenize import tokenize
    from unsloth_sft.training.callbacks import peak_rss_mb
    from unsloth_sft.training.loop import train
    from unsloth_sft.training.trainer import build_trainer

    torch.set_num_threads(threads)
    t_imports = time.time()
    path = model_path(model)
    clock = Clock()
    out_dir = Path(tempfile.mkdtemp(prefix="unsloth-sft-bench-"))
    cfg = bench_config(variant, path, out_dir)
    convs = bench_conversations(n)
    if variant == "trl":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        base = AutoModelForCausalLM.from_pretrained(path)
        t_load = t_prep = time.time()
        texts = [render(tokenizer, c, "chat").text for c in convs]  # the same rendered chat text as the pipeline
        trainer = plain_trl_trainer(base, tokenizer, texts, out_dir, [clock.callback()])  # LoRA-wraps + tokenizes
        t_prep_end = time.time()
        loaded = None
    else:
        loaded = load_model(cfg)
        tokenizer = loaded.tokenizer
        t_load = t_prep = time.time()
        if variant == "naive":  # no optimisation: full logits (the model's own loss), padding included
            rows = naive_rows(tokenizer, convs, cfg)
            dataset = datasets.Dataset.from_dict(rows)
            trainer = model_loss_trainer(cfg, loaded.model, tokenizer, dataset, [clock.callback()], loaded.backend)
        else:
            rows, _ = tokenize(tokenizer, convs, "chat", cfg.data, MAX_LENGTH)
            trainer = build_trainer(
                cfg,
                loaded.model,
                tokenizer,
                datasets.Dataset.from_dict(rows),
                callbacks=[clock.callback()],
                backend=loaded.backend,
            )
        t_prep_end = time.time()
    counter = TokenCounter(trainer.data_collator, tokenizer.pad_token_id)
    trainer.data_collator = counter
    torch.manual_seed(0)
    if loaded is not None:
        metrics = train(cfg, trainer)
        losses = [metrics["first_loss"], metrics["last_loss"]]
    else:
        trainer.train()
        logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        losses = [logged[0], logged[-1]] if logged else [None, None]
    t_done = time.time()
    pass_s = clock.end - clock.begin
    cpu_s = clock.cpu_end - clock.cpu_begin
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    return {
        "variant": variant,
        "model": model,
        "examples": n,
        "steps": trainer.state.global_step,
        "batches": counter.batches,
        "pass_s": round(pass_s, 2),
        "real_tokens": counter.real,
        "slots": counter.slots,
        "supervised_tokens": counter.supervised,
        "padding_fraction": round(1 - counter.real / counter.slots, 4) if counter.slots else None,
        "tokens_per_s": round(counter.real / pass_s, 1),
        "supervised_per_s": round(counter.supervised / pass_s, 1),
        "pass_cpu_s": round(cpu_s, 2),
        "tokens_per_cpu_s": round(counter.real / cpu_s, 1),
        "threads": torch.get_num_threads(),
        "time_to_first_step_s": round(clock.first_step - T0, 2),
        "imports_s": round(t_imports - T0, 2),
        "load_s": round(t_load - t_imports, 2),
        "prep_s": round(t_prep_end - t_prep, 2),
        "run_s": round(t_done - T0, 2),
        "prep_pct_of_run": round(100 * (t_prep_end - t_prep) / (t_done - T0), 2),
        "peak_rss_mb": peak_rss_mb(),
        "first_loss": losses[0],
        "last_loss": losses[1],
        "trainable_params": trainable,
        "total_params": total,
        "gradient_checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False)),
        "attn_implementation": trainer.model.config._attn_implementation,
        "description": VARIANTS[variant][0],
        "trainer": type(trainer).__name__,  # SFTTrainerModelLoss: full logits; the library's: trained positions only
        "load_average": [round(x, 2) for x in os.getloadavg()],  # 1/5/15-min load at the end: other jobs on the cores
    }


def run_variants(variants: list[str], model: str, n: int, threads: int = 1) -> list[dict]:
    """`run_variant` for each variant on `model` with `n` examples (`cpu_common.run_each`: one raises, several
    record each failure and go on)."""
    return run_each(variants, lambda variant: run_variant(variant, model, n, threads))


# ---------------------------------------------------------------- data preparation


def run_prep(n: int, threads: int = 1) -> dict:
    """Examples/s to format (chat template) and tokenize `n` examples: uncached (with its parts) and from a cache."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import gc
    import hashlib
    import shutil

    import datasets
    from transformers import AutoTokenizer

    from unsloth_sft.config import DataConfig
    from unsloth_sft.data.prompts import render
    from unsloth_sft.data.tokenize import tokenize
    from unsloth_sft.training.callbacks import peak_rss_mb

    datasets.disable_progress_bars()
    path = model_path("tiny")
    tokenizer = AutoTokenizer.from_pretrained(path)
    cfg = DataConfig(task="chat")
    convs = bench_conversations(n)
    out: dict = {"examples": n}

    def timed(name: str, fn):
        t, c = time.time(), time.process_time()
        value = fn()
        out[f"{name}_s"], out[f"{name}_cpu_s"] = round(time.time() - t, 3), round(time.process_time() - c, 3)
        return value

    # The library call first (cold: the tokenizer's BPE word cache is empty), then its parts one by one (warm).
    rows, _ = timed("uncached", lambda: tokenize(tokenizer, convs, "chat", cfg, MAX_LENGTH))
    out["uncached_examples_per_s"] = round(n / out["uncached_s"], 1)
    out["tokens"] = sum(map(len, rows["input_ids"]))
    gc.collect()
    part = convs[:PARTS_EXAMPLES]
    out["parts_examples"] = len(part)
    rendered = timed("render_only", lambda: [render(tokenizer, c, "chat") for c in part])  # jinja, i+2 renders each
    texts = [r.text for r in rendered]
    enc = timed("tokenizer_only", lambda: tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True))

    def label_masks(rendered, enc):  # the loop of data.tokenize, replicated
        return [
            [t if any(s <= start < e for s, e in r.spans) else -100 for t, (start, _) in zip(ids, offsets)]
            for r, ids, offsets in zip(rendered, enc["input_ids"], enc["offset_mapping"])
        ]

    timed("labels_loop", lambda: label_masks(rendered, enc))

    # A content-addressed cache: key = hash(tokenizer + template + data config + conversations), value = Arrow files.
    cache = Path(tempfile.mkdtemp(prefix="unsloth-sft-prep-cache-"))

    def key() -> str:
        h = hashlib.sha256()
        h.update(Path(path, "tokenizer.json").read_bytes())
        h.update((tokenizer.chat_template or "").encode())
        h.update(repr((cfg, "chat", MAX_LENGTH)).encode())
        h.update(json.dumps(convs, ensure_ascii=False).encode())
        return h.hexdigest()[:16]

    timed("cache_write", lambda: datasets.Dataset.from_dict(rows).save_to_disk(str(cache / key())))
    cached = timed("cached", lambda: datasets.load_from_disk(str(cache / key())))
    assert len(cached) == n
    out["cached_examples_per_s"] = round(n / out["cached_s"], 1)
    out["library_has_cache"] = False
    shutil.rmtree(cache, ignore_errors=True)
    out["peak_rss_mb"] = peak_rss_mb()
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return out
