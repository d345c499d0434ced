"""CPU benchmark: this pipeline (defaults, grouped, padding-free, packed) vs a naive pad-to-max pipeline vs plain TRL.

    python bench/cpu.py              # everything, ~10 min on 2 cores; writes bench/results/cpu.json and cpu.md
    python bench/cpu.py --quick      # tiny model only, fewer examples, ~2 min (results in a temporary folder)
    python bench/cpu.py --smoke      # every variant for one optimizer step on the tiny model: do they all start?

Every variant trains in its own process, one after another, so peak RSS and time to the first optimizer step
are that variant's own. The driver runs the workers (`--worker`) and the data-preparation benchmark (`--prep`).
"""

from __future__ import annotations

import time

T0 = time.time()  # before any heavy import: time-to-first-step counts imports, loading and data preparation

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS,
    ROOT,
    SMALL_NAME,
    SMALL_SHAPE,
    TokenCounter,
    bench_conversations,
    build_random_model,
    fmt,
    markdown_table,
    spawn,
)

SCRIPT = Path(__file__).resolve()  # workers are this script in fresh processes
VARIANTS = {
    # name: (what it is, the library's own options on top of bench_config, as dotted overrides; None: not the library)
    "pipeline": (
        "unsloth_sft: completion-only labels, padded to the batch's longest, random order",
        ["train.group_by_length=false"],
    ),
    "pipeline-grouped": (
        "unsloth_sft, train.group_by_length: true (the default since this benchmark)",
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
MAX_LENGTH = 1024  # params/demo-cpu.yaml's max_seq_length, and TRL's default max_length
BATCH, ACCUM = 2, 4  # the library's defaults (per_device_train_batch_size, gradient_accumulation_steps)
PREP_EXAMPLES = 20_000
SMOKE_EXAMPLES = BATCH * ACCUM  # one optimizer step


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny model only, fewer examples (~2 min)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help=f"start every variant for one optimizer step ({SMOKE_EXAMPLES} examples, tiny model) and report "
        "which fail; no timings (~1 min)",
    )
    p.add_argument("--models", default=None, help=f"comma list of {', '.join(MODELS)} (default: both; --quick: tiny)")
    p.add_argument(
        "--variants",
        default=None,
        help=f"comma list of {', '.join(VARIANTS)} (default: all but the last; --quick: {', '.join(QUICK_VARIANTS)})",
    )
    p.add_argument("--examples", type=int, default=None, help="examples per variant (default: per model size)")
    p.add_argument(
        "--prep-examples", type=int, default=None, help=f"examples for the data-prep benchmark ({PREP_EXAMPLES})"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default bench/results; --quick: the run's temporary folder)",
    )
    p.add_argument("--no-prep", action="store_true", help="skip the data-preparation benchmark")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per worker (default 1: with other jobs on the cores, 2 OpenMP threads "
        "stall each other, up to 10x slower steps)",
    )
    # worker modes (the driver runs these in subprocesses)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--prep", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="tiny", help=argparse.SUPPRESS)
    p.add_argument("--json-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.variants, args.examples = "tiny", ",".join(VARIANTS), args.examples or SMOKE_EXAMPLES
    args.models = (args.models or ("tiny" if args.quick else ",".join(MODELS))).split(",")
    args.variants = (args.variants or ",".join(QUICK_VARIANTS if args.quick else DEFAULT_VARIANTS)).split(",")
    for name in args.models + [args.model]:
        if name not in MODELS:
            p.error(f"unknown model '{name}'; choose from {', '.join(MODELS)}")
    for name in args.variants:
        if name not in VARIANTS:
            p.error(f"unknown variant '{name}'; choose from {', '.join(VARIANTS)}")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if args.examples is not None and args.examples < 8:
        p.error("--examples must be >= 8 (one optimizer step is 8 examples)")
    args.prep_examples = args.prep_examples or (4_000 if args.quick else PREP_EXAMPLES)
    args.out = args.out or (None if args.quick else RESULTS)  # a quick run does not replace the committed results
    return args


def examples_for(model: str, args: argparse.Namespace) -> int:
    return args.examples or (QUICK_EXAMPLES if args.quick else EXAMPLES)[model]


# ---------------------------------------------------------------- models


def model_path(model: str) -> Path:
    """The tiny Gemma-2 of the library, or the ~14M random-init Gemma-2 built beside it in the cache."""
    from unsloth_sft.tiny import cache_root, tiny_model_path

    tiny = tiny_model_path()
    if model == "tiny":
        return tiny
    return build_random_model(cache_root() / f"{SMALL_NAME}-{tiny.name.rsplit('-', 1)[-1]}", SMALL_SHAPE, tiny)


# ---------------------------------------------------------------- one variant (worker process)


def bench_config(variant: str, path: Path, out_dir: Path):
    """The RunConfig of a variant: 16-bit LoRA r16 on all linear layers, one epoch, plus the variant's own options."""
    from unsloth_sft.config import load_config

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


class Clock:
    """TrainerCallback-like timestamps: train begin, first optimizer step end, train end."""

    def __init__(self):
        self.begin = self.first_step = self.end = None
        self.cpu_begin = self.cpu_end = None  # process CPU seconds: robust to other jobs sharing the cores

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class _Clock(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                clock.begin, clock.cpu_begin = time.time(), time.process_time()

            def on_step_end(self, args, state, control, **kwargs):
                if clock.first_step is None:
                    clock.first_step = time.time()

            def on_train_end(self, args, state, control, **kwargs):
                clock.end, clock.cpu_end = time.time(), time.process_time()

        return _Clock()


def naive_rows(tokenizer, convs, cfg) -> dict:
    """Every example padded to MAX_LENGTH with the pad token; labels on every real token, -100 on padding."""
    import dataclasses

    from unsloth_sft.data import tokenize

    data_cfg = dataclasses.replace(cfg.data, train_on_completions_only=False)
    tokens, _ = tokenize(tokenizer, convs, "chat", data_cfg, MAX_LENGTH)
    pad = tokenizer.pad_token_id
    ids = [x + [pad] * (MAX_LENGTH - len(x)) for x in tokens["input_ids"]]
    labels = [x + [-100] * (MAX_LENGTH - len(x)) for x in tokens["labels"]]
    return {"input_ids": ids, "labels": labels}


def plain_trl_trainer(model, tokenizer, texts: list[str], out_dir: Path, callbacks: list):
    """SFTTrainer with its defaults (max_length 1024, full-sequence loss, no packing); only CPU, batch and epochs set."""
    import datasets
    from peft import LoraConfig
    from trl import SFTConfig

    from unsloth_sft.train import sft_trainer_class

    args = SFTConfig(
        output_dir=str(out_dir),
        use_cpu=True,
        bf16=False,  # SFTConfig's default bf16=True needs a GPU
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUM,
        num_train_epochs=1,
        optim="adamw_torch",
        learning_rate=2e-4,
        report_to="none",
        save_strategy="no",
        seed=3407,
        data_seed=3407,
    )
    peft_config = LoraConfig(
        r=16,
        lora_alpha=16,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    # the library's SFTTrainer: TRL's own, or on a CPU torch without Triton one with the model's loss (see train.py)
    return sft_trainer_class()(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_dict({"text": texts}),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )


def run_variants(variants: list[str], model: str, n: int, threads: int = 1) -> list[dict]:
    """One variant: its measurements (an error raises). Several (--smoke): one row each, {"error": ...} if it failed."""
    if len(variants) == 1:
        return [run_variant(variants[0], model, n, threads)]
    rows = []
    for variant in variants:
        try:
            rows.append(run_variant(variant, model, n, threads))
        except Exception as err:  # the next variant still runs; the traceback is in the worker's log
            traceback.print_exc()
            rows.append({"variant": variant, "error": f"{type(err).__name__}: {err}"})
    return rows


def run_variant(variant: str, model: str, n: int, threads: int = 1) -> dict:
    """Train one pass of `n` examples with one variant; return its measurements."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # before torch is imported
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import datasets
    import torch

    from unsloth_sft.data import tokenize
    from unsloth_sft.memory import peak_rss_mb
    from unsloth_sft.model import load_model
    from unsloth_sft.prompts import render
    from unsloth_sft.train import build_trainer, train

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
        if variant == "naive":
            rows = naive_rows(tokenizer, convs, cfg)
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
        "trainer": type(trainer).__name__,  # train.sft_trainer_class: on a CPU torch, the model's own loss (no Triton)
        "load_average": [round(x, 2) for x in os.getloadavg()],  # 1/5/15-min load at the end: other jobs on the cores
    }


# ---------------------------------------------------------------- data preparation (worker process)


def run_prep(n: int, threads: int = 1) -> dict:
    """Examples/s to format (chat template) and tokenize `n` examples: uncached (with its parts) and from a cache."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import gc
    import hashlib
    import shutil

    import datasets
    from transformers import AutoTokenizer

    from unsloth_sft.config import DataConfig
    from unsloth_sft.data import tokenize
    from unsloth_sft.memory import peak_rss_mb
    from unsloth_sft.prompts import render

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


# ---------------------------------------------------------------- driver


TRAIN_COLUMNS = [
    ("variant", "variant", 0),
    ("tokens_per_s", "useful tok/s", 0),
    ("vs_naive", "x naive", 2),
    ("vs_trl", "x TRL", 2),
    ("tokens_per_cpu_s", "useful tok/CPU-s", 0),
    ("vs_naive_cpu", "x naive (CPU)", 2),
    ("vs_trl_cpu", "x TRL (CPU)", 2),
    ("padding_pct", "padding %", 1),
    ("supervised_per_s", "loss tok/s", 0),
    ("pass_s", "pass s", 1),
    ("time_to_first_step_s", "to 1st step s", 1),
    ("prep_s", "prep s", 2),
    ("prep_pct_of_run", "prep % of run", 1),
    ("peak_rss_mb", "peak RSS MiB", 0),
    ("steps", "steps", 0),
]
PREP_COLUMNS = [
    ("mode", "data preparation", 0),
    ("examples", "examples", 0),
    ("seconds", "wall s", 2),
    ("cpu_seconds", "CPU s", 2),
    ("examples_per_s", "examples/s", 0),
    ("examples_per_cpu_s", "examples/CPU-s", 0),
]


def add_ratios(rows: list[dict]) -> None:
    """Each row's speed relative to the naive and plain-TRL rows, by wall clock and by CPU time."""
    by = {r["variant"]: r for r in rows}
    for r in rows:
        r["padding_pct"] = 100 * r["padding_fraction"] if r.get("padding_fraction") is not None else None
        for ref, key in (("naive", "vs_naive"), ("trl", "vs_trl")):
            base = by.get(ref)
            r[key] = round(r["tokens_per_s"] / base["tokens_per_s"], 3) if base else None
            r[key + "_cpu"] = round(r["tokens_per_cpu_s"] / base["tokens_per_cpu_s"], 3) if base else None


def prep_rows(prep: dict) -> list[dict]:
    modes = [
        ("uncached", "uncached: unsloth_sft.data.tokenize (render + tokenize + label masks)"),
        ("render_only", "  part (warm): chat-template rendering, prompts.render"),
        ("tokenizer_only", "  part (warm): tokenizer call, batched, with offsets"),
        ("labels_loop", "  part (warm): label masks, Python loop over offsets"),
        ("cached", "cached: hash inputs + datasets.load_from_disk (not in the library)"),
    ]
    rows = []
    for key, label in modes:
        wall, cpu = prep.get(f"{key}_s"), prep.get(f"{key}_cpu_s")
        n = prep.get("parts_examples", prep["examples"]) if "part" in label else prep["examples"]
        rows.append(
            {
                "mode": label,
                "examples": n,
                "seconds": wall,
                "cpu_seconds": cpu,
                "examples_per_s": n / wall if wall else None,
                "examples_per_cpu_s": n / cpu if cpu else None,
            }
        )
    return rows


def targets(rows: list[dict]) -> dict:
    """The issue's targets for one model: pipeline >= 2x naive useful tok/s, >= 1.0x plain TRL, prep < 5 % of the run."""
    by = {r["variant"]: r for r in rows}
    pipe = [r for r in rows if r["variant"].startswith("pipeline")]
    if not pipe:
        return {}
    best = max(pipe, key=lambda r: r["tokens_per_cpu_s"])
    out = {"best_pipeline_variant": best["variant"]}
    for name, r in (("defaults", by.get("pipeline")), ("best", best)):
        if r is None:
            continue
        for clock in ("", "_cpu"):
            if r.get("vs_naive" + clock) is not None:
                out[f"{name}_vs_naive{clock}"] = r["vs_naive" + clock]
                out[f"{name}_vs_naive{clock}_met"] = r["vs_naive" + clock] >= 2.0
            if r.get("vs_trl" + clock) is not None:
                out[f"{name}_vs_trl{clock}"] = r["vs_trl" + clock]
                out[f"{name}_vs_trl{clock}_met"] = r["vs_trl" + clock] >= 1.0
        out[f"{name}_prep_pct_of_run"] = r["prep_pct_of_run"]
        out[f"{name}_prep_met"] = r["prep_pct_of_run"] < 5.0
    return out


def render_markdown(results: dict) -> str:
    lines = [f"# CPU benchmark ({results['device']})", "", f"Command: `{results['command']}`", ""]
    st = results.get("settings")
    if st:
        lines += [
            f"Same examples for every variant of a model, one epoch, batch {st['per_device_train_batch_size']} x "
            f"accumulation {st['gradient_accumulation_steps']}, max_length {st['max_length']}, LoRA {st['lora']}, "
            f"{st['dtype']}, {st['optim']}, gradient checkpointing on, {st['torch_threads']} torch thread(s) per worker "
            "process. Useful tokens = non-padding tokens; `tok/CPU-s` divides by the worker's CPU seconds instead of "
            "wall seconds (robust to other jobs sharing the cores). Loss tokens = tokens whose label is not -100.",
            "",
        ]
    for model, block in results["models"].items():
        rows = block["rows"]
        lines += [
            f"## {model}: {block['total_params']:,} parameters ({block['trainable_params']:,} trainable LoRA), "
            f"{block['examples']} examples, {block['real_tokens']:,} tokens, one pass",
            "",
            markdown_table(rows, TRAIN_COLUMNS),
            "",
        ]
        t = block.get("targets") or {}
        if t:
            g = lambda k, t=t: fmt(t.get(k), 2)
            lines.append(
                f"Targets (wall clock / CPU time): `pipeline` {g('defaults_vs_naive')} / {g('defaults_vs_naive_cpu')}x "
                f"naive (target >= 2), {g('defaults_vs_trl')} / {g('defaults_vs_trl_cpu')}x plain TRL (target >= 1); "
                f"fastest pipeline variant by CPU time `{t['best_pipeline_variant']}`: {g('best_vs_naive')} / "
                f"{g('best_vs_naive_cpu')}x naive, {g('best_vs_trl')} / {g('best_vs_trl_cpu')}x TRL; data preparation "
                f"{g('defaults_prep_pct_of_run')} % of the `pipeline` run (target < 5)."
            )
            lines.append("")
    if results.get("prep"):
        lines += [
            "## Data preparation (format + tokenize, tiny tokenizer)",
            "",
            markdown_table(prep_rows(results["prep"]), PREP_COLUMNS),
            "",
        ]
    lines.append(f"Total benchmark wall time: {results['wall_s']:.0f} s.")
    return "\n".join(lines) + "\n"


def worker_flags(variants: list[str], model: str, n: int, args: argparse.Namespace) -> list[str]:
    """The arguments of a worker process that trains `variants` one after another on `model`."""
    return [
        "--worker",
        "--variants",
        ",".join(variants),
        "--model",
        model,
        "--examples",
        str(n),
        "--threads",
        str(args.threads),
    ]


def smoke(args: argparse.Namespace) -> list[str]:
    """Start every variant for one optimizer step on the tiny model; return the ones that failed.

    Two worker processes (unsloth, once imported, patches transformers and TRL): the unsloth variants, the rest.
    """
    model_path("tiny")  # build outside the workers (~3 min the first time)
    work = Path(tempfile.mkdtemp(prefix="unsloth-sft-bench-smoke-"))
    groups = [[v for v in args.variants if not uses_unsloth(v)], [v for v in args.variants if uses_unsloth(v)]]
    failed = []
    for i, group in enumerate(g for g in groups if g):
        _, done = spawn(SCRIPT, worker_flags(group, "tiny", args.examples, args), work / f"{i}.json", work / f"{i}.log")
        rows = {r["variant"]: r for r in (done or {}).get("rows", [])}
        for variant in group:
            row = rows.get(variant, {"error": "the worker process failed"})
            ok = row.get("steps", 0) >= 1
            print(
                f"{variant}: " + (f"ok ({row['steps']} optimizer step(s))" if ok else f"FAILED: {row.get('error')}"),
                flush=True,
            )
            if not ok:
                failed.append(variant)
    print(f"{len(args.variants) - len(failed)} of {len(args.variants)} variants started (logs in {work})")
    return failed


def drive(args: argparse.Namespace) -> dict:
    import platform

    from unsloth_sft.atomic import write_json

    os.environ.setdefault("UNSLOTH_SFT_CACHE", str(ROOT / ".cache"))
    for model in args.models:  # build once, outside the timed workers (the tiny one pre-trains ~3 min the first time)
        print(f"model {model}: {model_path(model)}", flush=True)
    suffix = "-quick" if args.quick else ""
    work = Path(tempfile.mkdtemp(prefix="unsloth-sft-bench-"))
    results: dict = {
        "command": "python bench/cpu.py" + (" --quick" if args.quick else ""),
        "device": f"CPU, {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "settings": {
            "max_length": MAX_LENGTH,
            "per_device_train_batch_size": BATCH,
            "gradient_accumulation_steps": ACCUM,
            "torch_threads": args.threads,
            "lora": "r 16, alpha 16, all 7 linear layers",
            "dtype": "float32",
            "optim": "adamw_torch",
            "backend": "transformers (16-bit LoRA; load_in_4bit false)",
            "epochs": 1,
            "data": "sample:hindi-dialogsum + sample:chat (all splits), shuffled and replicated; Gemma chat template",
        },
        "variants": {k: v[0] for k, v in VARIANTS.items() if k in args.variants},
        "models": {},
    }
    start = time.time()
    if not args.no_prep:
        print(f"data preparation: {args.prep_examples} examples", flush=True)
        _, prep = spawn(
            SCRIPT,
            ["--prep", "--examples", str(args.prep_examples), "--threads", str(args.threads)],
            work / "prep.json",
            work / "prep.log",
        )
        results["prep"] = prep
        if prep:
            print(
                f"  uncached {prep['uncached_examples_per_s']:.0f} ex/s, cached {prep['cached_examples_per_s']:.0f} ex/s",
                flush=True,
            )
    for model in args.models:
        n = examples_for(model, args)
        rows = []
        for variant in args.variants:
            print(f"{model} / {variant}: {n} examples", flush=True)
            name = f"{model}-{variant}"
            _, done = spawn(
                SCRIPT, worker_flags([variant], model, n, args), work / f"{name}.json", work / f"{name}.log"
            )
            for row in (done or {}).get("rows", []):
                rows.append(row)
                print(
                    f"  {row['tokens_per_s']:.0f} useful tok/s, padding {100 * row['padding_fraction']:.1f} %, "
                    f"pass {row['pass_s']:.1f} s, first step at {row['time_to_first_step_s']:.1f} s, "
                    f"peak RSS {row['peak_rss_mb']:.0f} MiB",
                    flush=True,
                )
        add_ratios(rows)
        ref = next((r for r in rows if r["variant"] == "pipeline"), rows[0] if rows else {})
        results["models"][model] = {
            "examples": n,
            "total_params": ref.get("total_params", 0),
            "trainable_params": ref.get("trainable_params", 0),
            "real_tokens": ref.get("real_tokens", 0),
            "rows": rows,
            "targets": targets(rows),
        }
    results["wall_s"] = round(time.time() - start, 1)
    args.out = args.out or work
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"cpu{suffix}.json", results)
    md = render_markdown(results)
    (args.out / f"cpu{suffix}.md").write_text(md, encoding="utf-8")
    print("\n" + md)
    print(f"wrote {args.out / f'cpu{suffix}.json'} and {args.out / f'cpu{suffix}.md'} (worker logs in {work})")
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("UNSLOTH_SFT_CACHE", str(ROOT / ".cache"))
    if args.worker or args.prep:
        from unsloth_sft.atomic import write_json

        if args.prep:
            result = run_prep(args.examples or PREP_EXAMPLES, args.threads)
        else:
            result = {"rows": run_variants(args.variants, args.model, examples_for(args.model, args), args.threads)}
        if args.json_out:
            write_json(args.json_out, result)
        else:
            print(json.dumps(result, indent=2))
        return 0
    if args.smoke:
        return 1 if smoke(args) else 0
    drive(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
