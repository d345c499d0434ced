"""CPU benchmark: this pipeline (defaults, grouped, padding-free, packed) vs a naive pad-to-max pipeline vs plain TRL.

    python bench/cpu.py              # everything, ~10 min on 2 cores; writes bench/results/cpu.json and cpu.md
    python bench/cpu.py --quick      # tiny model only, fewer examples, ~2 min (results in a temporary folder)
    python bench/cpu.py --smoke      # every variant for one optimizer step on the tiny model: do they all start?
    python bench/cpu.py --real       # real model only: Gemma-3 270M LoRA, 6 variants x 4 steps, ~20-35 min;
                                     # writes bench/results/cpu-real.json and cpu-real.md
    python bench/cpu.py --smoke --real  # the real-model variants, one step each on the tiny model (~1-1.5 min)

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
    matmul_peak,
    spawn,
    summed,
    train_flops,
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

# The real-model section (--real): Gemma-3 270M with its CPU recipe.
REAL_RECIPE = ROOT / "params" / "cpu" / "gemma3-270m-hindi-summarization.yaml"
REAL_MODEL = "gemma-3-270m"  # the packaged GGUF, converted once into the cache (~2 min)
SMOKE_REAL_MODEL = "tiny-gemma2"  # --smoke --real: the same variants on the library's tiny model, in seconds
REAL_STEPS, REAL_WARMUP = 3, 1  # timed optimizer steps after untimed warm-up ones: ~20-60 s a step on one core
REAL_EVAL_EXAMPLES = 8  # held-out examples scored (completion-only loss) after each variant, and on the base model
LOSS_TOLERANCE = 0.01  # "the same loss": the pipeline's held-out loss at most this much (nats/token) above TRL's
RSS_TARGET_MB = 3e9 / 2**20  # the 3 GB (decimal), in MiB: 2,861
PEAK_SIZE, PEAK_REPS = 2048, 5  # torch.mm of 2048 x 2048 matrices, best of 5 after one warm-up
PEAK_REPS_BF16 = 2  # bfloat16 (measured only when a variant trains in it): ~1 GFLOP/s on AVX2, ~17 s a rep
REAL_VARIANTS = {
    # name: (what it is, backend of the library's load_model; None: plain TRL loads the model itself)
    "pipeline-unsloth": (
        "this pipeline as the recipe runs it (backend auto picks unsloth): load_model + data.prepare + "
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
    p.add_argument(
        "--real",
        action="store_true",
        help=f"only the real-model section: {REAL_MODEL} LoRA with the recipe {REAL_RECIPE.relative_to(ROOT)}, "
        f"variants {', '.join(REAL_VARIANTS)}; writes cpu-real.json and cpu-real.md (~20-35 min). With --smoke: "
        f"those variants for one step on {SMOKE_REAL_MODEL}",
    )
    p.add_argument(
        "--real-model",
        default=None,
        help=f"--real: model.name to train (default {REAL_MODEL}; --smoke: {SMOKE_REAL_MODEL}); "
        "e.g. smollm2-135m-instruct",
    )
    p.add_argument(
        "--steps", type=int, default=None, help=f"--real: timed optimizer steps per variant ({REAL_STEPS}; --smoke: 1)"
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help=f"--real: untimed optimizer steps before them ({REAL_WARMUP}; --smoke: 0)",
    )
    p.add_argument(
        "--eval-examples",
        type=int,
        default=None,
        help=f"--real: held-out examples scored after training and on the base model ({REAL_EVAL_EXAMPLES}; --smoke: 2; 0: none)",
    )
    p.add_argument("--models", default=None, help=f"comma list of {', '.join(MODELS)} (default: both; --quick: tiny)")
    p.add_argument(
        "--variants",
        default=None,
        help=f"comma list of {', '.join(VARIANTS)} (default: all but the last; --quick: {', '.join(QUICK_VARIANTS)}); "
        f"with --real: of {', '.join(REAL_VARIANTS)} (default: all)",
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
    p.add_argument("--peak", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--peak-size", type=int, default=PEAK_SIZE, help=argparse.SUPPRESS)
    p.add_argument("--peak-reps", type=int, default=PEAK_REPS, help=argparse.SUPPRESS)
    p.add_argument("--peak-dtypes", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--base-eval", action="store_true", help=argparse.SUPPRESS)  # with --peak --real
    p.add_argument("--model", default="tiny", help=argparse.SUPPRESS)
    p.add_argument("--json-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.real:
        args.variants = (args.variants or ",".join(REAL_VARIANTS)).split(",")
        known = REAL_VARIANTS
        smoke = args.smoke
        args.real_model = args.real_model or (SMOKE_REAL_MODEL if smoke else REAL_MODEL)
        args.steps = args.steps if args.steps is not None else (1 if smoke else REAL_STEPS)
        args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (0 if smoke else REAL_WARMUP)
        args.eval_examples = (
            args.eval_examples if args.eval_examples is not None else (2 if smoke else REAL_EVAL_EXAMPLES)
        )
        if args.steps < 1 or args.warmup_steps < 0 or args.eval_examples < 0:
            p.error("--steps must be >= 1, --warmup-steps and --eval-examples >= 0")
    else:
        if args.smoke:
            args.models, args.variants, args.examples = "tiny", ",".join(VARIANTS), args.examples or SMOKE_EXAMPLES
        args.variants = (args.variants or ",".join(QUICK_VARIANTS if args.quick else DEFAULT_VARIANTS)).split(",")
        known = VARIANTS
    args.models = (args.models or ("tiny" if args.quick else ",".join(MODELS))).split(",")
    for name in args.models + [args.model]:
        if name not in MODELS:
            p.error(f"unknown model '{name}'; choose from {', '.join(MODELS)}")
    for name in args.variants:
        if name not in known:
            p.error(f"unknown variant '{name}'; choose from {', '.join(known)}")
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


def uses_unsloth(variant: str, real: bool = False) -> bool:
    """Whether the variant loads unsloth, which patches transformers and TRL for the rest of its process."""
    if real:
        return REAL_VARIANTS[variant][1] == "unsloth"
    return "model.backend=unsloth" in (VARIANTS[variant][1] or [])


class Clock:
    """TrainerCallback-like timestamps: train begin, the end of every optimizer step, train end."""

    def __init__(self):
        self.begin = self.first_step = self.end = None
        self.cpu_begin = self.cpu_end = None  # process CPU seconds: robust to other jobs sharing the cores
        self.step_ends: list[tuple[float, float]] = []  # (wall, CPU) at the end of each optimizer step

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class _Clock(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                clock.begin, clock.cpu_begin = time.time(), time.process_time()

            def on_step_end(self, args, state, control, **kwargs):
                clock.step_ends.append((time.time(), time.process_time()))
                if clock.first_step is None:
                    clock.first_step = clock.step_ends[0][0]

            def on_train_end(self, args, state, control, **kwargs):
                clock.end, clock.cpu_end = time.time(), time.process_time()

        return _Clock()


def naive_rows(tokenizer, convs, cfg, template: str = "chat", max_length: int = MAX_LENGTH) -> dict:
    """Every example padded to `max_length` with the pad token; labels on every real token, -100 on padding."""
    import dataclasses

    from unsloth_sft.data import tokenize

    data_cfg = dataclasses.replace(cfg.data, train_on_completions_only=False)
    tokens, _ = tokenize(tokenizer, convs, template, data_cfg, max_length)
    pad = tokenizer.pad_token_id
    ids = [x + [pad] * (max_length - len(x)) for x in tokens["input_ids"]]
    labels = [x + [-100] * (max_length - len(x)) for x in tokens["labels"]]
    return {"input_ids": ids, "labels": labels}


def model_loss_trainer_class():
    """TRL's SFTTrainer with `transformers.Trainer.compute_loss`: the model's own loss on full logits.

    TRL 1.15's own compute_loss always runs a fused lm_head + loss kernel that needs Triton, which a CPU build of
    torch lacks (it fails on the first step). Without it, the model's own loss is what is left: logits at every
    position, then cross-entropy, as `Trainer` (and TRL before the fused kernel) does. The library's CPU trainer
    (`train.sft_trainer_class`) also computes only the logits of trained positions; this class does not.
    """
    from transformers import Trainer
    from trl import SFTTrainer

    class SFTTrainerModelLoss(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return SFTTrainerModelLoss


def model_loss_trainer(cfg, model, tokenizer, dataset, callbacks: list, backend: str):
    """`train.build_trainer` with the model's own full-logits loss: the same SFTConfig, data and callbacks."""
    from unsloth_sft.runs import CHECKPOINTS
    from unsloth_sft.train import sft_config

    return model_loss_trainer_class()(
        model=model,
        args=sft_config(cfg, cfg.run_dir / CHECKPOINTS, backend),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )


def plain_trl_trainer(model, tokenizer, texts: list[str], out_dir: Path, callbacks: list, lora=None, **settings):
    """SFTTrainer with its defaults (max_length 1024, full-sequence loss, no packing, gradient checkpointing);
    only CPU, batch and length of training set (`settings`: SFTConfig arguments over this section's ones)."""
    import datasets
    from peft import LoraConfig
    from trl import SFTConfig

    args = SFTConfig(
        **{
            "output_dir": str(out_dir),
            "use_cpu": True,
            "bf16": False,  # SFTConfig's default bf16=True needs a GPU
            "per_device_train_batch_size": BATCH,
            "gradient_accumulation_steps": ACCUM,
            "num_train_epochs": 1,
            "optim": "adamw_torch",
            "learning_rate": 2e-4,
            "report_to": "none",
            "save_strategy": "no",
            "seed": 3407,
            "data_seed": 3407,
            **settings,
        }
    )
    peft_config = LoraConfig(
        r=lora.r if lora else 16,
        lora_alpha=lora.alpha if lora else 16,
        lora_dropout=lora.dropout if lora else 0.0,
        task_type="CAUSAL_LM",
        target_modules=list(lora.target_modules)
        if lora
        else ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    # TRL's own loss needs Triton (absent from CPU torch); the model's loss on full logits is what remains
    return model_loss_trainer_class()(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_dict({"text": texts}),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )


def run_variants(variants: list[str], model: str, n: int, threads: int = 1, run=None) -> list[dict]:
    """One variant: its measurements (an error raises). Several (--smoke): one row each, {"error": ...} if it failed.

    `run(variant)` trains one variant; by default `run_variant` on `model` with `n` examples.
    """
    run = run or (lambda variant: run_variant(variant, model, n, threads))
    if len(variants) == 1:
        return [run(variants[0])]
    rows = []
    for variant in variants:
        try:
            rows.append(run(variant))
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


# ---------------------------------------------------------------- real model (worker process)


def real_config(variant: str, model: str, steps: int, out_dir: Path):
    """The recipe's RunConfig for a real-model variant: `steps` optimizer steps, no warm-up of the learning rate."""
    from unsloth_sft.config import load_config

    backend = REAL_VARIANTS[variant][1] or "transformers"
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
    return load_config(REAL_RECIPE, overrides=overrides)


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


def real_examples(cfg, steps: int, eval_examples: int):
    """The recipe's examples cut to one epoch of `steps` optimizer steps and `eval_examples` held-out ones."""
    import dataclasses

    from unsloth_sft.data import load_examples

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

    from unsloth_sft.model import resolve_model_path

    path = resolve_model_path(cfg.model.name)
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def first_decoder_layer(model):
    """The first transformer block (a `...DecoderLayer`) of a model, however it is wrapped."""
    return next(m for m in model.modules() if type(m).__name__.endswith("DecoderLayer"))


def run_real_variant(variant: str, model: str, steps: int, warmup: int, eval_examples: int, threads: int = 1) -> dict:
    """Train one real-model variant for warmup + steps optimizer steps on the recipe's first examples."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    backend = REAL_VARIANTS[variant][1]
    if backend == "unsloth":
        import unsloth  # noqa: F401  (first: it patches transformers, trl and peft)
    import shutil

    import datasets
    import torch

    from unsloth_sft.data import prepare
    from unsloth_sft.evaluate import eval_loss
    from unsloth_sft.memory import peak_rss_mb
    from unsloth_sft.model import load_model
    from unsloth_sft.prompts import render
    from unsloth_sft.train import build_trainer, train

    torch.set_num_threads(threads)
    t_imports = time.time()
    total_steps = warmup + steps
    out_dir = Path(tempfile.mkdtemp(prefix="unsloth-sft-bench-real-"))
    cfg = real_config(variant, model, total_steps, out_dir)
    t = cfg.train
    examples = real_examples(cfg, total_steps, eval_examples)
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
        settings = {  # the recipe's optimiser, so that losses compare; the rest is TRL's defaults
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
        "description": REAL_VARIANTS[variant][0],
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


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

    from unsloth_sft.data import prepare
    from unsloth_sft.evaluate import eval_loss

    torch.set_num_threads(threads)
    out_dir = Path(tempfile.mkdtemp(prefix="unsloth-sft-bench-real-"))
    cfg = real_config("pipeline", model, 1, out_dir)
    tokenizer, base = plain_model(cfg)
    data = prepare(cfg, tokenizer, real_examples(cfg, 1, eval_examples))
    loss = eval_loss(base, tokenizer, data.test, cfg.eval.batch_size)
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"model": model, "eval_examples": len(data.test), "eval_loss": round(loss, 5) if loss is not None else None}


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


def real_worker_flags(variants: list[str], args: argparse.Namespace) -> list[str]:
    """The arguments of a worker process that trains real-model `variants` one after another."""
    return [
        "--worker",
        "--real",
        "--variants",
        ",".join(variants),
        "--real-model",
        args.real_model,
        "--steps",
        str(args.steps),
        "--warmup-steps",
        str(args.warmup_steps),
        "--eval-examples",
        str(args.eval_examples),
        "--threads",
        str(args.threads),
    ]


def smoke(args: argparse.Namespace) -> list[str]:
    """Start every variant for one optimizer step on the tiny model; return the ones that failed.

    Two worker processes, run at the same time (nothing is timed; unsloth, once imported, patches transformers and
    TRL): the unsloth variants, the rest. With --real: the real-model variants (on `--real-model`, the tiny model
    by default), and a small matmul-peak worker.
    """
    from concurrent.futures import ThreadPoolExecutor

    real = args.real
    if real:
        from unsloth_sft.model import resolve_model_path

        resolve_model_path(args.real_model)  # build or convert outside the workers
    else:
        model_path("tiny")  # build outside the workers (~3 min the first time)
    work = Path(tempfile.mkdtemp(prefix="unsloth-sft-bench-smoke-"))
    groups = [
        g
        for g in (
            [v for v in args.variants if not uses_unsloth(v, real)],
            [v for v in args.variants if uses_unsloth(v, real)],
        )
        if g
    ]
    jobs = [real_worker_flags(g, args) if real else worker_flags(g, "tiny", args.examples, args) for g in groups]
    if real:
        jobs.append(
            ["--peak", "--peak-size", "256", "--peak-reps", "1", "--peak-dtypes", "float32,bfloat16"]
            + ["--base-eval", "--real", "--real-model", args.real_model, "--eval-examples", str(args.eval_examples)]
            + ["--threads", str(args.threads)]
        )
    with ThreadPoolExecutor(len(jobs)) as pool:  # subprocesses: the threads only wait
        results = list(
            pool.map(lambda i: spawn(SCRIPT, jobs[i], work / f"{i}.json", work / f"{i}.log")[1], range(len(jobs)))
        )
    failed = []
    for group, done in zip(groups, results):
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
    if real:
        peak = results[-1] or {}
        ok = peak.get("float32", {}).get("gflops_per_cpu_s", 0) > 0
        print("matmul peak: " + ("ok" if ok else "FAILED"), flush=True)
        base = peak.get("base", {}).get("eval_loss")
        print("base-model held-out loss: " + (f"ok ({base:.3f})" if base else "FAILED"), flush=True)
        failed += [name for name, good in (("matmul peak", ok), ("base-model loss", base)) if not good]
    started = len([v for v in args.variants if v not in failed])
    print(f"{started} of {len(args.variants)} variants started (logs in {work})")
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


# ---------------------------------------------------------------- real-model driver

REAL_COLUMNS = [
    ("variant", "variant", 0),
    ("dtype", "dtype", 0),
    ("tokens_per_cpu_s", "useful tok/CPU-s", 1),
    ("vs_trl_cpu", "x TRL (CPU)", 2),
    ("tokens_per_s", "useful tok/s", 1),
    ("vs_trl", "x TRL", 2),
    ("padding_pct", "padding %", 1),
    ("logits_pct", "logits at % of tokens", 0),
    ("cpu_s_per_step", "CPU s/step", 1),
    ("recomputes", "layers recomputed", 0),
    ("gflops_per_cpu_s", "GFLOP/CPU-s", 1),
    ("mfu_pct", "MFU %", 1),
    ("last_loss", "train loss, last step", 3),
    ("eval_loss_after", "held-out loss after", 3),
    ("peak_rss_mb", "peak RSS MiB", 0),
    ("time_to_first_step_s", "to 1st step s", 0),
    ("steps", "steps", 0),
]
PIPELINES = ("pipeline-unsloth", "pipeline")  # "this pipeline": what backend auto picks here, and transformers


def best_peaks(measurements: list[dict]) -> dict:
    """Per dtype, the measurement with the most GFLOP per CPU second (a peak is the best the cores did)."""
    out: dict = {}
    for m in measurements:
        for dtype, v in (m or {}).items():
            if (
                isinstance(v, dict)
                and v.get("gflops_per_cpu_s")
                and (dtype not in out or v["gflops_per_cpu_s"] > out[dtype]["gflops_per_cpu_s"])
            ):
                out[dtype] = v
    return out


def add_real_ratios(rows: list[dict], peaks: dict) -> None:
    """MFU against the measured peak of each row's dtype; speed relative to plain TRL by wall clock and CPU time."""
    by = {r["variant"]: r for r in rows}
    trl = by.get("trl")
    for r in rows:
        r["padding_pct"] = 100 * r["padding_fraction"] if r.get("padding_fraction") is not None else None
        r["logits_pct"] = 100 * r["logits_fraction"] if r.get("logits_fraction") is not None else None
        forwards = r.get("layer_forwards_per_step")
        r["recomputes"] = forwards > 1.5 if forwards is not None else None  # gradient checkpointing at work
        peak = peaks.get(r.get("dtype"), {}).get("gflops_per_cpu_s")
        r["peak_gflops_per_cpu_s"] = peak
        r["mfu"] = round(r["gflops_per_cpu_s"] / peak, 4) if peak and r.get("gflops_per_cpu_s") else None
        r["mfu_pct"] = 100 * r["mfu"] if r["mfu"] is not None else None
        for clock, key in (("", "tokens_per_s"), ("_cpu", "tokens_per_cpu_s")):
            ok = trl and trl.get(key) and r.get(key)
            r["vs_trl" + clock] = round(r[key] / trl[key], 3) if ok else None


def real_targets(rows: list[dict]) -> dict:
    """The issue's targets for each pipeline row: >= 2x plain TRL's useful tok/CPU-s at the same held-out loss
    (at most LOSS_TOLERANCE above TRL's after the same steps), and peak RSS <= 3 GB."""
    by = {r["variant"]: r for r in rows}
    trl = by.get("trl")
    out: dict = {}
    for name in PIPELINES:
        r = by.get(name)
        if r is None:
            continue
        t = {"vs_trl": r.get("vs_trl"), "vs_trl_cpu": r.get("vs_trl_cpu"), "peak_rss_mb": r.get("peak_rss_mb")}
        t["speed_met"] = None if r.get("vs_trl_cpu") is None else r["vs_trl_cpu"] >= 2.0
        mine, theirs = r.get("eval_loss_after"), (trl or {}).get("eval_loss_after")
        t["eval_loss"], t["trl_eval_loss"] = mine, theirs
        t["loss_met"] = None if mine is None or theirs is None else mine <= theirs + LOSS_TOLERANCE
        t["rss_met"] = None if r.get("peak_rss_mb") is None else r["peak_rss_mb"] <= RSS_TARGET_MB
        t["all_met"] = bool(t["speed_met"] and t["loss_met"] and t["rss_met"])
        if by.get("trl-no-checkpointing", {}).get("tokens_per_cpu_s") and r.get("tokens_per_cpu_s"):
            t["vs_trl_no_checkpointing_cpu"] = round(
                r["tokens_per_cpu_s"] / by["trl-no-checkpointing"]["tokens_per_cpu_s"], 3
            )
        out[name] = t
    full, pipe = by.get("pipeline-full-logits"), by.get("pipeline")
    if full and pipe and full.get("tokens_per_cpu_s") and pipe.get("tokens_per_cpu_s"):
        out["trained_positions_speedup_cpu"] = round(pipe["tokens_per_cpu_s"] / full["tokens_per_cpu_s"], 3)
    return out


def _met(flag) -> str:
    return "not measured" if flag is None else ("met" if flag else "NOT met")


def render_real_markdown(results: dict) -> str:
    st, peaks = results["settings"], results.get("peaks", {})
    rows = results["rows"]
    ref = next((r for r in rows if r.get("total_params")), {})
    lines = [
        f"# CPU benchmark, real model: {results['model']} ({results['device']})",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Recipe `{st['recipe']}`: max_seq_length {st['max_seq_length']}, LoRA r {st['lora_r']} / alpha "
        f"{st['lora_alpha']} on {', '.join(st['target_modules'])}, batch {st['batch']}, {st['optim']}, learning rate "
        f"{st['learning_rate']} ({st['lr_scheduler_type']}, no warm-up), seed {st['seed']}. Every variant trains on "
        f"the same first {st['examples']} training examples (one pass: {st['warmup_steps']} untimed + "
        f"{st['timed_steps']} timed optimizer steps) and is scored on the same {st['eval_examples']} held-out "
        f"examples (completion-only loss, `evaluate.eval_loss`; the base model, where every variant starts: "
        f"{fmt((results.get('base_eval') or {}).get('eval_loss'), 3)}). {st['torch_threads']} torch thread(s) per worker "
        "process, one process per variant. Useful tokens = non-padding tokens of the timed steps; `tok/CPU-s` "
        "divides by the worker's CPU seconds (robust to other jobs on the cores).",
        "",
    ]
    measured = results.get("peak_measurements") or []
    if peaks:
        parts = []
        for dtype, v in peaks.items():
            each = " / ".join(fmt((m or {}).get(dtype, {}).get("gflops_per_cpu_s"), 1) for m in measured)
            parts.append(f"{dtype} **{v['gflops_per_cpu_s']:.1f}** GFLOP/CPU-s (before / after the variants: {each})")
        first = next(iter(peaks.values()))
        lines += [
            f"Matmul peak measured here (torch.mm {first['size']} x {first['size']}, best of {first['reps']}, "
            f"{first['threads']} thread(s)): " + "; ".join(parts) + ". A row's MFU is its model GFLOP per CPU "
            "second over the peak of the dtype most of its parameters have.",
            "",
        ]
    if ref:
        lines += [
            f"## {results['model']}: {ref['total_params']:,} parameters ({ref['nonembed_params']:,} non-embedding "
            f"with LoRA, {ref['trainable_params']:,} trainable; vocabulary {ref['vocab']:,} x hidden {ref['hidden']})",
            "",
        ]
    lines += [markdown_table(rows, REAL_COLUMNS), ""]
    failed = results.get("failed") or []
    if failed:
        lines += [f"Failed (see the worker logs): {', '.join(failed)}.", ""]
    t = results.get("targets") or {}
    for name in PIPELINES:
        g = t.get(name)
        if not g:
            continue
        rss = g["peak_rss_mb"]
        lines.append(
            f"Targets, `{name}`: {fmt(g['vs_trl_cpu'], 2)}x plain TRL's useful tok/CPU-s (wall clock "
            f"{fmt(g['vs_trl'], 2)}x; target >= 2: {_met(g['speed_met'])}"
            + (
                f"; {g['vs_trl_no_checkpointing_cpu']:.2f}x TRL without checkpointing"
                if "vs_trl_no_checkpointing_cpu" in g
                else ""
            )
            + f"), held-out loss {fmt(g['eval_loss'], 3)} vs TRL's {fmt(g['trl_eval_loss'], 3)} after the same steps "
            f"(same loss: at most {LOSS_TOLERANCE} above; {_met(g['loss_met'])}), peak RSS {fmt(rss, 0)} MiB = "
            f"{fmt(rss * 2**20 / 1e9 if rss else None, 2)} GB (target <= 3 GB: {_met(g['rss_met'])})."
        )
        lines.append("")
    if "trained_positions_speedup_cpu" in t:
        lines += [
            f"Trained-position logits alone (`pipeline` over `pipeline-full-logits`, CPU time): "
            f"{t['trained_positions_speedup_cpu']:.2f}x.",
            "",
        ]
    lines += [
        "Model FLOPs per timed step = 2 x forward (backward ~= one forward: activation gradients through frozen "
        "weights, no weight gradients but LoRA's); forward = 2 x non-embedding parameters (LoRA included) per useful "
        "token + 2 x vocab x hidden per useful position whose logits are computed. Attention scores and padding are "
        "not counted. `logits at % of tokens`: those positions over useful tokens.",
        "",
        f"Total benchmark wall time: {results['wall_s']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def drive_real(args: argparse.Namespace) -> dict:
    """The real-model section: the matmul peak, each variant in its own process, the peak again; JSON + markdown."""
    import platform

    from unsloth_sft.atomic import write_json
    from unsloth_sft.config import gradient_checkpointing, load_config
    from unsloth_sft.model import resolve_model_path

    os.environ.setdefault("UNSLOTH_SFT_CACHE", str(ROOT / ".cache"))
    print(f"model {args.real_model}: {resolve_model_path(args.real_model)}", flush=True)  # converted once (~2 min)
    work = Path(tempfile.mkdtemp(prefix="unsloth-sft-bench-real-"))
    cfg = load_config(REAL_RECIPE, overrides=[f"model.name={args.real_model}"])
    t = cfg.train
    start = time.time()
    peak_flags = ["--peak", "--threads", str(args.threads)]
    base_flags = ["--base-eval", "--real", "--real-model", args.real_model, "--eval-examples", str(args.eval_examples)]
    first = spawn(SCRIPT, peak_flags + base_flags, work / "peak-0.json", work / "peak-0.log")[1] or {}
    base = first.pop("base", None)
    measurements = [first]
    if first.get("float32"):
        print(f"matmul peak float32: {first['float32']['gflops_per_cpu_s']:.1f} GFLOP/CPU-s", flush=True)
    if base:
        print(f"base model held-out loss: {fmt(base['eval_loss'], 3)} ({base['eval_examples']} examples)", flush=True)
    rows, failed = [], []
    for variant in args.variants:
        print(f"{args.real_model} / {variant}", flush=True)
        _, done = spawn(SCRIPT, real_worker_flags([variant], args), work / f"{variant}.json", work / f"{variant}.log")
        if not done:
            failed.append(variant)
        for row in (done or {}).get("rows", []):
            rows.append(row)
            print(
                f"  {fmt(row['tokens_per_cpu_s'])} useful tok/CPU-s, {fmt(row['cpu_s_per_step'])} CPU s/step, "
                f"held-out loss after {fmt(row['eval_loss_after'], 3)}, "
                f"peak RSS {row['peak_rss_mb']:.0f} MiB",
                flush=True,
            )
    if any(r.get("dtype") == "bfloat16" for r in rows):  # ~1 GFLOP/s without AVX-512 bf16: 2 reps, ~1 min
        peak_flags += ["--peak-dtypes", "float32,bfloat16", "--peak-reps", str(PEAK_REPS_BF16)]
    measurements.append(spawn(SCRIPT, peak_flags, work / "peak-1.json", work / "peak-1.log")[1])
    peaks = best_peaks(measurements)
    add_real_ratios(rows, peaks)
    results = {
        "command": "python bench/cpu.py " + " ".join(args.argv),
        "device": f"CPU, {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "model": args.real_model,
        "settings": {
            "recipe": str(REAL_RECIPE.relative_to(ROOT)),
            "max_seq_length": cfg.model.max_seq_length,
            "lora_r": cfg.lora.r,
            "lora_alpha": cfg.lora.alpha,
            "target_modules": list(cfg.lora.target_modules),
            "gradient_checkpointing": bool(gradient_checkpointing(cfg.lora)),
            "batch": f"{t.per_device_train_batch_size} x accumulation {t.gradient_accumulation_steps}",
            "optim": t.optim,
            "learning_rate": t.learning_rate,
            "lr_scheduler_type": t.lr_scheduler_type,
            "seed": t.seed,
            "examples": (args.warmup_steps + args.steps)
            * t.per_device_train_batch_size
            * t.gradient_accumulation_steps,
            "warmup_steps": args.warmup_steps,
            "timed_steps": args.steps,
            "eval_examples": args.eval_examples,
            "torch_threads": args.threads,
            "flops_convention": "2 x forward; forward = 2 x non-embedding params per useful token + "
            "2 x vocab x hidden per useful position with logits; attention scores not counted",
        },
        "variants": {k: v[0] for k, v in REAL_VARIANTS.items() if k in args.variants},
        "base_eval": base,
        "peak_measurements": measurements,
        "peaks": peaks,
        "rows": rows,
        "failed": failed,
        "targets": real_targets(rows),
        "wall_s": round(time.time() - start, 1),
    }
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    stem = "cpu-real" if args.real_model == REAL_MODEL else f"cpu-real-{Path(args.real_model).name}"
    write_json(out / f"{stem}.json", results)
    md = render_real_markdown(results)
    (out / f"{stem}.md").write_text(md, encoding="utf-8")
    print("\n" + md)
    print(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.md'} (worker logs in {work})")
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("UNSLOTH_SFT_CACHE", str(ROOT / ".cache"))
    if args.worker or args.prep or args.peak:
        from unsloth_sft.atomic import write_json

        if args.prep:
            result = run_prep(args.examples or PREP_EXAMPLES, args.threads)
        elif args.peak:
            result = run_peak(args.threads, args.peak_size, args.peak_reps, args.peak_dtypes.split(","))
            if args.base_eval:
                result["base"] = run_base_eval(args.real_model, args.eval_examples, args.threads)
        elif args.real:

            def run(variant):
                return run_real_variant(
                    variant, args.real_model, args.steps, args.warmup_steps, args.eval_examples, args.threads
                )

            result = {"rows": run_variants(args.variants, args.real_model, 0, args.threads, run=run)}
        else:
            result = {"rows": run_variants(args.variants, args.model, examples_for(args.model, args), args.threads)}
        if args.json_out:
            write_json(args.json_out, result)
        else:
            print(json.dumps(result, indent=2))
        return 0
    if args.smoke:
        return 1 if smoke(args) else 0
    if args.real:
        drive_real(args)
    else:
        drive(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
