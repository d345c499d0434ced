"""The real-recipe benchmark: the Gemma-3 270M recipe as `unsloth-sft train` runs it vs plain TRL, on one machine.

    python -m bench real --quick --out DIR   # <= 10 min on 2 cores: DIR/real.json (+ real-details.json)
    python -m bench real --out DIR           # more steps, and the slow path's losses beside the recipe's

Each variant trains in its own process, one after another, on the recipe's first training examples, with the same
torch threads (the cores this process may use); a third process measures the matmul peak of the compute dtype on
those threads. The contract of real.json (checked from outside) is in bench/README.md, with the MFU formula.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, spawn

MODULE = "bench.real"
MODEL = "gemma-3-270m"
QUICK = {"steps": 3, "warmup": 1, "peak_reps": 3}  # ~20-60 s a step for TRL on 2 cores, ~2 min to load and set up
FULL = {"steps": 8, "warmup": 1, "peak_reps": 5}
VARIANTS = ("recipe", "trl")  # real.json's variants
SLOW = "recipe-slow"  # the full run adds it: the recipe's settings, eager, the model's own loss on full logits
V_KEYS = ("tokens_per_s", "mfu", "peak_rss_mb", "final_loss", "steps")
LOSS_NOISE = 0.02  # nats: the recipe's loss after N steps vs the slow path's, same data and seed (bf16 / chunking)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench real", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps: <= 10 min on 2 cores")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for real.json")
    p.add_argument("--model", default=MODEL, help=f"model.name (default {MODEL}; tiny-gemma2 for a dry run)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps per variant")
    p.add_argument("--warmup-steps", type=int, default=None, help="untimed steps first (the compile happens there)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores this process may use)")
    p.add_argument("--compile", choices=("auto", "true", "false"), default=None, help="train.compile (recipe's)")
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # worker mode
    p.add_argument("--peak", action="store_true", help=argparse.SUPPRESS)  # worker mode
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--peak-reps", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--json-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    mode = QUICK if args.quick else FULL
    args.steps = mode["steps"] if args.steps is None else args.steps
    args.warmup_steps = mode["warmup"] if args.warmup_steps is None else args.warmup_steps
    args.peak_reps = mode["peak_reps"] if args.peak_reps is None else args.peak_reps
    if args.steps < 1 or args.warmup_steps < 0 or (args.threads is not None and args.threads < 1):
        p.error("--steps and --threads must be >= 1, --warmup-steps >= 0")
    if args.threads is None:
        from unsloth_sft.core.allocator import threads

        args.threads = threads()
    return args


def worker_flags(variant: str, args: argparse.Namespace) -> list[str]:
    flags = ["--variant", variant, "--model", args.model, "--steps", str(args.steps)]
    flags += ["--warmup-steps", str(args.warmup_steps), "--threads", str(args.threads)]
    return flags + (["--compile", args.compile] if args.compile else [])


def variant_result(row: dict | None, peak_gflops: float | None) -> dict | None:
    """A variant's V of real.json from a worker's row: MFU = model FLOP/s over the measured peak FLOP/s."""
    if not row:
        return None
    mfu = row["flops"] / row["timed_s"] / (peak_gflops * 1e9) if peak_gflops and row.get("timed_s") else None
    return {
        "tokens_per_s": float(row["tokens_per_s"]),
        "mfu": round(float(mfu), 4) if mfu is not None else None,
        "peak_rss_mb": float(row["peak_rss_mb"]),
        "final_loss": float(row["final_loss"]),
        "steps": int(row["steps"]),
    }


def real_json(cpu: dict, threads: int, dtype: str, peak_gflops: float, rows: dict) -> dict:
    """real.json exactly as the contract says (bench/README.md)."""
    return {
        "cpu": {"model": cpu["model"], "flags": list(cpu["flags"])},
        "threads": int(threads),
        "compute_dtype": dtype,
        "peak_tflops": round(peak_gflops / 1000, 4),
        "variants": {name: variant_result(rows.get(name), peak_gflops) for name in VARIANTS},
    }


def loss_check(rows: dict) -> dict | None:
    """The recipe's per-step losses beside the slow path's (same data, same seed): equal within LOSS_NOISE?"""
    fast, slow = rows.get("recipe"), rows.get(SLOW)
    if not fast or not slow:
        return None
    pairs = list(zip(fast["step_losses"], slow["step_losses"]))
    worst = max(abs(a - b) for a, b in pairs) if pairs else None
    return {
        "recipe": fast["step_losses"],
        SLOW: slow["step_losses"],
        "max_abs_diff": worst,
        "within_noise": None if worst is None else worst <= LOSS_NOISE,
        "noise": LOSS_NOISE,
    }


def drive(args: argparse.Namespace) -> dict:
    """The matmul peak, then each variant in its own process; DIR/real.json and DIR/real-details.json."""
    from unsloth_sft.core.files import write_json
    from unsloth_sft.core.hardware import cpu_info
    from unsloth_sft.models.backends import dtype_line, dtype_name
    from unsloth_sft.models.sources import resolve_model_path

    start = time.time()
    print(dtype_line("auto"), f"| {args.threads} threads", flush=True)
    print(f"model {args.model}: {resolve_model_path(args.model)}", flush=True)  # converted once (~2 min)
    dtype = dtype_name("auto")
    work = Path(tempfile.mkdtemp(prefix="unsloth-sft-bench-real-"))
    peak_flags = ["--peak", "--dtype", dtype, "--threads", str(args.threads), "--peak-reps", str(args.peak_reps)]
    peak = spawn(MODULE, peak_flags, work / "peak.json", work / "peak.log")[1] or {}
    gflops = peak.get("gflops_per_s")
    print(f"matmul peak {dtype}: {gflops} GFLOP/s on {args.threads} threads", flush=True)
    rows = {}
    for variant in (*VARIANTS, *(() if args.quick else (SLOW,))):
        _, done = spawn(MODULE, worker_flags(variant, args), work / f"{variant}.json", work / f"{variant}.log")
        rows[variant] = done
        if done:
            print(
                f"{variant}: {done['tokens_per_s']:.1f} tokens/s, final loss {done['final_loss']:.4f}, "
                f"peak RSS {done['peak_rss_mb']:.0f} MiB, {done['s_to_first_step']:.0f} s to the first step",
                flush=True,
            )
    result = real_json(cpu_info(), args.threads, dtype, gflops or 0.0, rows)
    recipe, trl = result["variants"]["recipe"], result["variants"]["trl"]
    details = {
        "command": " ".join(["python -m bench real", *args.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "peak": peak,
        "rows": rows,
        "recipe_vs_trl": round(recipe["tokens_per_s"] / trl["tokens_per_s"], 3) if recipe and trl else None,
        "loss_check": loss_check(rows),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.time() - start, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "real.json", result)
    write_json(args.out / "real-details.json", details)
    print(
        f"recipe / plain TRL tokens/s: {details['recipe_vs_trl']}; wrote {args.out / 'real.json'} "
        f"({details['wall_s']:.0f} s; worker logs in {work})",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("UNSLOTH_SFT_CACHE", str(ROOT / ".cache"))
    if args.peak or args.variant:
        from bench.real_worker import run_peak, run_variant
        from unsloth_sft.core.files import write_json

        result = run_peak(args) if args.peak else run_variant(args)
        write_json(args.json_out, result)
        return 0
    variants = drive(args)["variants"]
    return 0 if all(variants.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
