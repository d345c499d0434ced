"""CPU benchmark, real model: Gemma-3 270M LoRA with its CPU recipe, this pipeline vs plain TRL vs naive.

    python -m bench.cpu_real            # 6 variants x 4 steps, ~20-35 min; writes bench/results/cpu-real.json and .md
    python -m bench.cpu_real --smoke    # the same variants, one step each on the tiny model (~1-1.5 min)

Useful tokens per CPU second, MFU against a matmul peak measured here, held-out loss after the same steps, peak
RSS. Every variant trains in its own process, one after another; a reference worker measures the matmul peak and
the base model's held-out loss before them, the peak again after. The driver runs the workers (`--worker`,
bench.cpu_real_worker) and the peak (`--peak`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, cpu_device, fmt, machine, spawn
from bench.cpu_common import by_backend, run_workers, smoke_report
from bench.cpu_real_report import add_ratios, best_peaks, render_markdown, targets
from bench.cpu_real_worker import (  # notes the start time (T0): nothing heavy is imported before it
    EVAL_EXAMPLES,
    MODEL,
    PEAK_REPS,
    PEAK_REPS_BF16,
    PEAK_SIZE,
    RECIPE,
    SMOKE_MODEL,
    STEPS,
    VARIANTS,
    WARMUP,
    run_base_eval,
    run_peak,
    run_variants,
    uses_unsloth,
)

MODULE = "bench.cpu_real"  # workers are this module in fresh processes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help=f"start every variant for one optimizer step on {SMOKE_MODEL} and report which fail; no timings "
        "(~1-1.5 min)",
    )
    p.add_argument(
        "--real-model",
        default=None,
        help=f"model.name to train (default {MODEL}; --smoke: {SMOKE_MODEL}); e.g. smollm2-135m-instruct, which "
        "writes cpu-real-<name>.json and .md",
    )
    p.add_argument("--steps", type=int, default=None, help=f"timed optimizer steps per variant ({STEPS}; --smoke: 1)")
    p.add_argument(
        "--warmup-steps", type=int, default=None, help=f"untimed optimizer steps before them ({WARMUP}; --smoke: 0)"
    )
    p.add_argument(
        "--eval-examples",
        type=int,
        default=None,
        help=f"held-out examples scored after training and on the base model ({EVAL_EXAMPLES}; --smoke: 2; 0: none)",
    )
    p.add_argument(
        "--variants",
        default=None,
        help=f"comma list of {', '.join(VARIANTS)} (default: all); recipe {RECIPE.relative_to(ROOT)}",
    )
    p.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per worker (default 1: with other jobs on the cores, 2 OpenMP threads "
        "stall each other, up to 10x slower steps)",
    )
    # worker modes (the driver runs these in subprocesses)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--peak", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--peak-size", type=int, default=PEAK_SIZE, help=argparse.SUPPRESS)
    p.add_argument("--peak-reps", type=int, default=PEAK_REPS, help=argparse.SUPPRESS)
    p.add_argument("--peak-dtypes", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--base-eval", action="store_true", help=argparse.SUPPRESS)  # with --peak
    p.add_argument("--json-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    smoke = args.smoke
    args.variants = (args.variants or ",".join(VARIANTS)).split(",")
    args.real_model = args.real_model or (SMOKE_MODEL if smoke else MODEL)
    args.steps = args.steps if args.steps is not None else (1 if smoke else STEPS)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (0 if smoke else WARMUP)
    args.eval_examples = args.eval_examples if args.eval_examples is not None else (2 if smoke else EVAL_EXAMPLES)
    if args.steps < 1 or args.warmup_steps < 0 or args.eval_examples < 0:
        p.error("--steps must be >= 1, --warmup-steps and --eval-examples >= 0")
    for name in args.variants:
        if name not in VARIANTS:
            p.error(f"unknown variant '{name}'; choose from {', '.join(VARIANTS)}")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    args.out = args.out or RESULTS
    return args


def worker_flags(variants: list[str], args: argparse.Namespace) -> list[str]:
    """The arguments of a worker process that trains `variants` one after another."""
    return [
        "--worker",
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


def base_eval_flags(args: argparse.Namespace) -> list[str]:
    """The arguments that make a `--peak` worker score the base model's held-out loss too."""
    return ["--base-eval", "--real-model", args.real_model, "--eval-examples", str(args.eval_examples)]


def smoke(args: argparse.Namespace) -> list[str]:
    """Start every variant for one optimizer step (on `--real-model`, the tiny model by default); return the ones
    that failed.

    Three worker processes, run at the same time (nothing is timed; unsloth, once imported, patches transformers
    and TRL): the unsloth variants, the rest, and a small matmul-peak worker that scores the base model too.
    """
    from unsloth_sft.models.sources import resolve_model_path

    resolve_model_path(args.real_model)  # build or convert outside the workers
    groups = by_backend(args.variants, uses_unsloth)
    jobs = [worker_flags(g, args) for g in groups]
    jobs.append(
        ["--peak", "--peak-size", "256", "--peak-reps", "1", "--peak-dtypes", "float32,bfloat16"]
        + base_eval_flags(args)
        + ["--threads", str(args.threads)]
    )
    results, work = run_workers(MODULE, jobs)
    failed = smoke_report(groups, results)
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
    """The matmul peak, each variant in its own process, the peak again; JSON + markdown."""
    from unsloth_sft.config.load import load_config
    from unsloth_sft.config.model import gradient_checkpointing
    from unsloth_sft.core.files import write_json
    from unsloth_sft.models.sources import resolve_model_path

    os.environ.setdefault("UNSLOTH_SFT_CACHE", str(ROOT / ".cache"))
    print(f"model {args.real_model}: {resolve_model_path(args.real_model)}", flush=True)  # converted once (~2 min)
    work = Path(tempfile.mkdtemp(prefix="unsloth-sft-bench-real-"))
    cfg = load_config(RECIPE, overrides=[f"model.name={args.real_model}"])
    t = cfg.train
    start = time.time()
    peak_flags = ["--peak", "--threads", str(args.threads)]
    first = spawn(MODULE, peak_flags + base_eval_flags(args), work / "peak-0.json", work / "peak-0.log")[1] or {}
    base = first.pop("base", None)
    measurements = [first]
    if first.get("float32"):
        print(f"matmul peak float32: {first['float32']['gflops_per_cpu_s']:.1f} GFLOP/CPU-s", flush=True)
    if base:
        print(f"base model held-out loss: {fmt(base['eval_loss'], 3)} ({base['eval_examples']} examples)", flush=True)
    rows, failed = [], []
    for variant in args.variants:
        print(f"{args.real_model} / {variant}", flush=True)
        _, done = spawn(MODULE, worker_flags([variant], args), work / f"{variant}.json", work / f"{variant}.log")
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
    measurements.append(spawn(MODULE, peak_flags, work / "peak-1.json", work / "peak-1.log")[1])
    peaks = best_peaks(measurements)
    add_ratios(rows, peaks)
    results = {
        "command": " ".join([f"python -m {MODULE}", *args.argv]),
        "device": cpu_device(),
        "cpu": machine(),  # model, ISA flags, what model.dtype auto picks
        "model": args.real_model,
        "settings": {
            "recipe": str(RECIPE.relative_to(ROOT)),
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
        "variants": {k: v[0] for k, v in VARIANTS.items() if k in args.variants},
        "base_eval": base,
        "peak_measurements": measurements,
        "peaks": peaks,
        "rows": rows,
        "failed": failed,
        "targets": targets(rows),
        "wall_s": round(time.time() - start, 1),
    }
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stem = "cpu-real" if args.real_model == MODEL else f"cpu-real-{Path(args.real_model).name}"
    write_json(out / f"{stem}.json", results)
    md = render_markdown(results)
    (out / f"{stem}.md").write_text(md, encoding="utf-8")
    print("\n" + md)
    print(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.md'} (worker logs in {work})")
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("UNSLOTH_SFT_CACHE", str(ROOT / ".cache"))
    if args.worker or args.peak:
        from unsloth_sft.core.files import write_json

        if args.peak:
            result = run_peak(args.threads, args.peak_size, args.peak_reps, args.peak_dtypes.split(","))
            if args.base_eval:
                result["base"] = run_base_eval(args.real_model, args.eval_examples, args.threads)
        else:
            rows = run_variants(
                args.variants, args.real_model, args.steps, args.warmup_steps, args.eval_examples, args.threads
            )
            result = {"rows": rows}
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
