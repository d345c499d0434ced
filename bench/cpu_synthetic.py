"""CPU benchmark: this pipeline (defaults, grouped, padding-free, packed) vs a naive pad-to-max pipeline vs plain TRL.

    python -m bench.cpu_synthetic            # everything, ~10 min on 2 cores; writes bench/results/cpu.json and cpu.md
    python -m bench.cpu_synthetic --quick    # tiny model only, fewer examples, ~2 min (results in a temporary folder)
    python -m bench.cpu_synthetic --smoke    # every variant, one optimizer step on the tiny model: do they all start?

Models: the library's tiny Gemma-2 and a ~15M random-init Gemma-2 (`small`). Every variant trains in its own
process, one after another, so peak RSS and time to the first optimizer step are that variant's own. The driver
runs the workers (`--worker`, bench.cpu_synthetic_worker) and the data-preparation benchmark (`--prep`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, cpu_device, machine, spawn
from bench.cpu_common import MAX_LENGTH, by_backend, run_workers, smoke_report
from bench.cpu_synthetic_report import add_ratios, render_markdown, targets
from bench.cpu_synthetic_worker import (  # notes the start time (T0): nothing heavy is imported before it
    ACCUM,
    BATCH,
    DEFAULT_VARIANTS,
    EXAMPLES,
    MODELS,
    PREP_EXAMPLES,
    QUICK_EXAMPLES,
    QUICK_VARIANTS,
    SMOKE_EXAMPLES,
    VARIANTS,
    model_path,
    run_prep,
    run_variants,
    uses_unsloth,
)

MODULE = "bench.cpu_synthetic"  # workers are this module in fresh processes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.smoke:
        args.models, args.variants, args.examples = "tiny", ",".join(VARIANTS), args.examples or SMOKE_EXAMPLES
    args.variants = (args.variants or ",".join(QUICK_VARIANTS if args.quick else DEFAULT_VARIANTS)).split(",")
    args.models = (args.models or ("tiny" if args.quick else ",".join(MODELS))).split(",")
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

    Two worker processes, run at the same time (nothing is timed; unsloth, once imported, patches transformers and
    TRL): the unsloth variants, the rest.
    """
    model_path("tiny")  # build outside the workers (~3 min the first time)
    groups = by_backend(args.variants, uses_unsloth)
    results, work = run_workers(MODULE, [worker_flags(g, "tiny", args.examples, args) for g in groups])
    failed = smoke_report(groups, results)
    started = len([v for v in args.variants if v not in failed])
    print(f"{started} of {len(args.variants)} variants started (logs in {work})")
    return failed


def drive(args: argparse.Namespace) -> dict:
    from unsloth_sft.core.files import write_json

    os.environ.setdefault("UNSLOTH_SFT_CACHE", str(ROOT / ".cache"))
    for model in args.models:  # build once, outside the timed workers (the tiny one pre-trains ~3 min the first time)
        print(f"model {model}: {model_path(model)}", flush=True)
    suffix = "-quick" if args.quick else ""
    work = Path(tempfile.mkdtemp(prefix="unsloth-sft-bench-"))
    results: dict = {
        "command": f"python -m {MODULE}" + (" --quick" if args.quick else ""),
        "device": cpu_device(),
        "cpu": machine(),  # model, ISA flags, what model.dtype auto picks
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
            MODULE,
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
                MODULE, worker_flags([variant], model, n, args), work / f"{name}.json", work / f"{name}.log"
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
        from unsloth_sft.core.files import write_json

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
