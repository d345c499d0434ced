"""GPU benchmark: the unsloth and transformers backends on random-initialised Gemma-2 2B and 9B, loaded 4-bit.

    python -m bench.gpu                          # 2b and 9b, both backends, seq 2048: tokens/s, peak VRAM, MFU
    python -m bench.gpu --models 9b --bisect     # also the longest sequence that trains (bisection on OOM)
    python -m bench.gpu --check                  # only: which packages are missing, what would run
    python -m bench.gpu --smoke                  # the user's path end to end on the 2B (bench.gpu_smoke; --help there)

No weights are downloaded: each model is built from the released Gemma-2 config values with random weights
(bf16 safetensors, once, under $UNSLOTH_SFT_CACHE/gpu-models), then loaded 4-bit through the library
(`load_base` + `add_lora`) with model.backend set. Every (model, backend) pair runs in its own process
(bench.gpu_worker), so peak VRAM is that pair's own. Results: bench/results/gpu-<gpu>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    RESULTS,
    ROOT,
    count_parameters,
    gemma2_config,
    markdown_table,
    missing_packages,
    requirements_message,
    spawn,
)
from bench.gpu_worker import BACKENDS, SHAPES, models_root, run_build, run_worker

MODULE = "bench.gpu"  # workers are this module in fresh processes
# Import names each backend needs (find_spec only; nothing is imported by the check).
REQUIRED = {
    "transformers": ["torch", "transformers", "peft", "accelerate", "trl", "datasets", "bitsandbytes", "unsloth_sft"],
    "unsloth": ["unsloth", "unsloth_zoo"],
}
TARGETS = {"speedup": 1.9, "vram_ratio": 0.5}  # on 9B: unsloth tokens/s >= 1.9x transformers, peak VRAM <= 0.5x


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models", default="2b,9b", help="comma list of 2b, 9b")
    p.add_argument("--backends", default="unsloth,transformers", help="comma list of unsloth, transformers")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence for the throughput run")
    p.add_argument("--batch", type=int, default=2, help="per_device_train_batch_size")
    p.add_argument("--grad-accum", type=int, default=4, help="gradient_accumulation_steps")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (alpha = r), on all 7 linear layers")
    p.add_argument("--optim", default="adamw_8bit", help="optimizer (bitsandbytes 8-bit AdamW by default)")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps timed, after the warm-up steps")
    p.add_argument("--warmup-steps", type=int, default=2, help="optimizer steps run but not timed (kernels, allocator)")
    p.add_argument("--bisect", action="store_true", help="also find the longest sequence that trains (batch --batch)")
    p.add_argument("--bisect-lo", type=int, default=1024, help="shortest sequence the bisection tries")
    p.add_argument("--bisect-hi", type=int, default=65536, help="longest sequence the bisection tries")
    p.add_argument("--bisect-step", type=int, default=1024, help="resolution of the bisection, tokens")
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="GPU peak dense bf16 TFLOP/s for MFU (default: by name)"
    )
    p.add_argument("--models-dir", type=Path, default=None, help="where the random models are saved (default: cache)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    p.add_argument("--check", action="store_true", help="check packages and print the plan; run nothing")
    p.add_argument(
        "--smoke", action="store_true", help="train/eval/export/infer/notebook on the 2B: python -m bench.gpu_smoke"
    )
    # worker mode (the driver runs one per model and backend)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.models = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    args.backends = [b.strip().lower() for b in args.backends.split(",") if b.strip()]
    for m in args.models:
        if m not in SHAPES:
            p.error(f"unknown model '{m}'; choose from {', '.join(SHAPES)}")
    for b in args.backends:
        if b not in BACKENDS:
            p.error(f"unknown backend '{b}'; choose from {', '.join(BACKENDS)}")
    for name in ("seq_len", "batch", "grad_accum", "lora_r", "steps", "bisect_lo", "bisect_hi", "bisect_step"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup_steps < 0:
        p.error("--warmup-steps must be >= 0")
    if args.bisect_lo > args.bisect_hi:
        p.error(f"--bisect-lo {args.bisect_lo} is above --bisect-hi {args.bisect_hi}")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        p.error("--peak-tflops must be > 0")
    args.out = args.out or RESULTS
    return args


# ---------------------------------------------------------------- checks and names


def check_requirements(backends: list[str]) -> str | None:
    """None when every package the backends need is installed, else the message naming what is missing."""
    names = list(REQUIRED["transformers"])
    if "unsloth" in backends:
        names += REQUIRED["unsloth"]
    missing = missing_packages(names)
    return requirements_message(missing) if missing else None


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3' (for the results file name)."""
    name = re.sub(r"^nvidia\s+", "", name.strip(), flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def plan(args: argparse.Namespace) -> list[dict]:
    """What would run: each model's shape and parameter count (meta device: no memory)."""
    rows = []
    for size in args.models:
        shape = SHAPES[size]
        rows.append(
            {
                "model": f"gemma2-{size}",
                "params": count_parameters(gemma2_config(shape)),
                "layers": shape["num_hidden_layers"],
                "hidden": shape["hidden_size"],
                "backends": ", ".join(args.backends),
                "seq_len": args.seq_len,
                "tokens_per_step": args.seq_len * args.batch * args.grad_accum,
            }
        )
    return rows


# ---------------------------------------------------------------- driver


COLUMNS = [
    ("model", "model", 0),
    ("backend", "backend", 0),
    ("tokens_per_s", "tokens/s", 0),
    ("speedup", "x transformers", 2),
    ("peak_reserved_gb", "peak reserved GB", 2),
    ("vram_ratio", "VRAM / transformers", 2),
    ("mfu_pct", "MFU %", 1),
    ("longest_seq", "longest seq", 0),
    ("step_s", "s/step", 2),
    ("load_s", "load s", 0),
]


def compare(rows: list[dict]) -> dict:
    """Speed-up and VRAM ratio of unsloth over transformers per model, and the 9B targets."""
    by = {(r["model"], r["backend"]): r for r in rows}
    verdict = {}
    for r in rows:
        r["mfu_pct"] = 100 * r["mfu"] if r.get("mfu") is not None else None
        base = by.get((r["model"], "transformers"))
        if base:
            r["speedup"] = round(r["tokens_per_s"] / base["tokens_per_s"], 3)
            r["vram_ratio"] = round(r["peak_reserved_gb"] / base["peak_reserved_gb"], 3)
    u, t = by.get(("gemma2-9b", "unsloth")), by.get(("gemma2-9b", "transformers"))
    if u and t:
        verdict = {
            "speedup_9b": u["speedup"],
            "speedup_met": u["speedup"] >= TARGETS["speedup"],
            "vram_ratio_9b": u["vram_ratio"],
            "vram_met": u["vram_ratio"] <= TARGETS["vram_ratio"],
            "mfu_9b_unsloth": u.get("mfu"),
        }
    return verdict


def render_markdown(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"# GPU benchmark ({results['gpu']})",
        "",
        f"Command: `{results['command']}`",
        "",
        f"seq {s['seq_len']}, batch {s['batch']}, grad accum {s['grad_accum']}, LoRA r {s['lora_r']} on all linear layers, "
        f"{s['optim']}, gradient checkpointing, 4-bit NF4 base (random weights).",
        "",
        markdown_table(results["rows"], COLUMNS),
        "",
    ]
    v = results.get("targets") or {}
    if v:
        lines.append(
            f"Targets on 9B: unsloth {v['speedup_9b']}x the transformers backend's tokens/s (target >= {TARGETS['speedup']}: "
            f"{'met' if v['speedup_met'] else 'not met'}), {v['vram_ratio_9b']}x its peak VRAM (target <= "
            f"{TARGETS['vram_ratio']}: {'met' if v['vram_met'] else 'not met'})."
        )
    for r in results.get("failed", []):
        lines.append(f"- {r['model']} / {r['backend']}: failed (exit {r['rc']}); see {r['log']}")
    return "\n".join(lines) + "\n"


def common_flags(args: argparse.Namespace) -> list[str]:
    flags = [
        "--seq-len",
        str(args.seq_len),
        "--batch",
        str(args.batch),
        "--grad-accum",
        str(args.grad_accum),
        "--lora-r",
        str(args.lora_r),
        "--optim",
        args.optim,
        "--steps",
        str(args.steps),
        "--warmup-steps",
        str(args.warmup_steps),
        "--bisect-lo",
        str(args.bisect_lo),
        "--bisect-hi",
        str(args.bisect_hi),
        "--bisect-step",
        str(args.bisect_step),
    ]
    if args.bisect:
        flags.append("--bisect")
    if args.peak_tflops:
        flags += ["--peak-tflops", str(args.peak_tflops)]
    if args.models_dir:
        flags += ["--models-dir", str(args.models_dir)]
    return flags


def drive(args: argparse.Namespace) -> int:
    import torch

    from unsloth_sft.core.files import write_json

    name = torch.cuda.get_device_name(0)
    work = Path(tempfile.mkdtemp(prefix="unsloth-sft-gpu-bench-"))
    print(f"building models {', '.join(args.models)} (random init, bf16) under {models_root(args)}", flush=True)
    rc, built = spawn(
        MODULE,
        ["--build", "--models", ",".join(args.models), *common_flags(args)],
        work / "build.json",
        work / "build.log",
    )
    if built is None:
        return rc or 1
    rows, failed = [], []
    start = time.time()
    for size in args.models:
        for backend in args.backends:
            print(f"gemma2-{size} / {backend}", flush=True)
            tag = f"{size}-{backend}"
            rc, row = spawn(
                MODULE,
                ["--worker", "--models", size, "--backends", backend, *common_flags(args)],
                work / f"{tag}.json",
                work / f"{tag}.log",
            )
            if row is None:
                failed.append(
                    {"model": f"gemma2-{size}", "backend": backend, "rc": rc, "log": str(work / f"{tag}.log")}
                )
                continue
            rows.append(row)
            print(
                f"  {row['tokens_per_s']:.0f} tokens/s, peak reserved {row['peak_reserved_gb']:.1f} GB"
                + (f", MFU {100 * row['mfu']:.1f} %" if row.get("mfu") else "")
                + (f", longest seq {row.get('longest_seq')}" if args.bisect else ""),
                flush=True,
            )
    results = {
        "command": " ".join([f"python -m {MODULE}", *sys.argv[1:]]),
        "gpu": name,
        "settings": {
            k: getattr(args, k) for k in ("seq_len", "batch", "grad_accum", "lora_r", "optim", "steps", "warmup_steps")
        },
        "built": built,
        "rows": rows,
        "failed": failed,
        "targets": compare(rows),
        "wall_s": round(time.time() - start, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"gpu-{gpu_slug(name)}"
    write_json(args.out / f"{stem}.json", results)
    md = render_markdown(results)
    (args.out / f"{stem}.md").write_text(md, encoding="utf-8")
    print("\n" + md + f"\nwrote {args.out / stem}.json and .md (logs in {work})")
    return 0 if not failed else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--smoke" in argv:  # its own options (--model, --steps-timeout, --out, --results): see bench/gpu_smoke.py
        from bench import gpu_smoke

        return gpu_smoke.main([a for a in argv if a != "--smoke"])
    args = parse_args(argv)
    os.environ.setdefault("UNSLOTH_SFT_CACHE", str(ROOT / ".cache"))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")  # nothing is downloaded: the GPU machine may have no network
    message = check_requirements(args.backends)
    if args.check:
        print(message or "all packages present")
        print(
            markdown_table(
                plan(args),
                [
                    ("model", "model", 0),
                    ("params", "parameters", 0),
                    ("layers", "layers", 0),
                    ("hidden", "hidden", 0),
                    ("backends", "backends", 0),
                    ("seq_len", "seq", 0),
                    ("tokens_per_step", "tokens/step", 0),
                ],
            )
        )
        return 0 if message is None else 2
    if message:
        print(message, file=sys.stderr)
        return 2
    from unsloth_sft.core.files import write_json

    if args.build:
        write_json(args.json_out, run_build(args)) if args.json_out else print(run_build(args))
        return 0
    import torch

    if not torch.cuda.is_available():
        print(
            f"no CUDA GPU here: {MODULE} measures GPU throughput and VRAM; run it on a GPU machine "
            f"(python -m {MODULE} --check shows the plan)",
            file=sys.stderr,
        )
        return 2
    if args.worker:
        result = run_worker(args.models[0], args.backends[0], args)
        write_json(args.json_out, result) if args.json_out else print(json.dumps(result, indent=2))
        return 0
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
