"""GPU benchmark: the unsloth and transformers backends on random-initialised Gemma-2 2B and 9B, loaded 4-bit.

    python bench/gpu.py                          # 2b and 9b, both backends, seq 2048: tokens/s, peak VRAM, MFU
    python bench/gpu.py --models 9b --bisect     # also the longest sequence that trains (bisection on OOM)
    python bench/gpu.py --check                  # only: which packages are missing, what would run

No weights are downloaded: each model is built from the released Gemma-2 config values with random weights
(bf16 safetensors, once, under $UNSLOTH_SFT_CACHE/gpu-models), then loaded 4-bit through
unsloth_sft.model.load_model with model.backend set. Every (model, backend) pair runs in its own process, so
peak VRAM is that pair's own. Results: bench/results/gpu-<gpu>.json and .md.
"""

from __future__ import annotations

import time

T0 = time.time()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    GEMMA2_2B,
    GEMMA2_9B,
    RESULTS,
    ROOT,
    build_random_model,
    count_parameters,
    gemma2_config,
    longest_trainable,
    markdown_table,
    missing_packages,
    requirements_message,
    spawn,
)

SCRIPT = Path(__file__).resolve()  # workers are this script in fresh processes
SHAPES = {"2b": GEMMA2_2B, "9b": GEMMA2_9B}
BACKENDS = ("unsloth", "transformers")
# Import names each backend needs (find_spec only; nothing is imported by the check).
REQUIRED = {
    "transformers": ["torch", "transformers", "peft", "accelerate", "trl", "datasets", "bitsandbytes", "unsloth_sft"],
    "unsloth": ["unsloth", "unsloth_zoo"],
}
# Dense bf16 tensor-core peak, FLOP/s (vendor datasheets, no sparsity). H200 = H100 compute, more/faster memory.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12}
TARGETS = {"speedup": 1.9, "vram_ratio": 0.5}  # on 9B: unsloth tokens/s >= 1.9x transformers, peak VRAM <= 0.5x


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
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


# ---------------------------------------------------------------- checks, names, numbers


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


def peak_flops(name: str, tflops: float | None = None) -> float | None:
    """Peak dense bf16 FLOP/s: --peak-tflops, else the table entry whose key is in the GPU's name, else None."""
    if tflops is not None:
        return tflops * 1e12
    upper = name.upper()
    return next((v for k, v in PEAK_FLOPS.items() if k in upper), None)


def mfu(params: int, tokens_per_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation, 6 * N * tokens/s / peak (the 6N convention: forward 2N, backward 4N)."""
    return 6 * params * tokens_per_s / peak if peak else None


def model_dir(root: Path, size: str) -> Path:
    return Path(root) / f"gemma2-{size}-random-bf16"


def models_root(args: argparse.Namespace) -> Path:
    from unsloth_sft.tiny import cache_root

    return args.models_dir or cache_root() / "gpu-models"


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


# ---------------------------------------------------------------- one model and backend (worker process)


def bench_config(
    path: Path, backend: str, max_seq_length: int, args: argparse.Namespace, run_dir: Path, load_in_4bit: bool = True
):
    """The same RunConfig for both backends: QLoRA r on all linear layers, gradient checkpointing, 8-bit AdamW."""
    from unsloth_sft.config import load_config

    return load_config(
        overrides=[
            f"output_dir={run_dir}",
            "run_name=gpu-bench",
            f"finetune={'qlora' if load_in_4bit else 'lora'}",
            f"model.name={path}",
            f"model.backend={backend}",
            f"model.max_seq_length={max_seq_length}",
            f"model.load_in_4bit={str(load_in_4bit).lower()}",
            f"lora.r={args.lora_r}",
            f"lora.alpha={args.lora_r}",
            "lora.use_gradient_checkpointing=unsloth",  # unsloth: its offloaded checkpointing; transformers: standard
            f"train.per_device_train_batch_size={args.batch}",
            f"train.gradient_accumulation_steps={args.grad_accum}",
            f"train.max_steps={args.warmup_steps + args.steps}",
            f"train.optim={args.optim}",
            "train.warmup_steps=0",
            "train.logging_steps=1",
            "train.stop_on_nan=false",  # random weights: the loss value is not the point
        ]
    )


def synthetic_rows(rows: int, seq_len: int, vocab: int) -> dict:
    """`rows` sequences of exactly `seq_len` random token ids (seed 0, no padding), every token trained."""
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (rows, seq_len), generator=g).tolist()  # 0-3: pad/eos/bos/unk
    return {"input_ids": ids, "labels": [list(r) for r in ids]}


class StepTimer:
    """Times each optimizer step (synchronising CUDA) through a TrainerCallback."""

    def __init__(self):
        self.times: list[float] = []
        self._start = None

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        def sync():
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()

        class _Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                sync()
                timer._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                sync()
                timer.times.append(time.perf_counter() - timer._start)

        return _Timer()


def train_steps(loaded, cfg, seq_len: int, steps: int, grad_accum: int | None = None) -> StepTimer:
    """Train `steps` optimizer steps on synthetic rows of `seq_len` with the library's trainer; the step times."""
    import dataclasses

    import datasets

    from unsloth_sft.train import build_trainer

    t = cfg.train
    accum = grad_accum or t.gradient_accumulation_steps
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, max_seq_length=max(seq_len, cfg.model.max_seq_length)),
        train=dataclasses.replace(t, max_steps=steps, gradient_accumulation_steps=accum),
    )
    rows = synthetic_rows(steps * accum * t.per_device_train_batch_size, seq_len, len(loaded.tokenizer))
    timer = StepTimer()
    trainer = build_trainer(
        cfg,
        loaded.model,
        loaded.tokenizer,
        datasets.Dataset.from_dict(rows),
        callbacks=[timer.callback()],
        backend=loaded.backend,
    )
    try:
        trainer.train()
    finally:
        del trainer
        free_memory()
    return timer


def free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_oom(err: BaseException) -> bool:
    """CUDA out-of-memory (torch.OutOfMemoryError) or the CPU allocator's 'can't allocate memory'."""
    import torch

    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def fits(loaded, cfg, seq_len: int) -> bool:
    """True when one optimizer step (no accumulation) at `seq_len` trains; False on out-of-memory."""
    try:
        train_steps(loaded, cfg, seq_len, steps=1, grad_accum=1)
        return True
    except Exception as err:  # noqa: BLE001  (anything but OOM is a real error)
        if not is_oom(err):
            raise
    # outside the except block: the traceback (and the activations its frames hold) is gone by now
    loaded.model.zero_grad(set_to_none=True)
    free_memory()
    return False


def run_worker(size: str, backend: str, args: argparse.Namespace) -> dict:
    """Throughput, peak VRAM and (with --bisect) the longest trainable sequence for one model and backend."""
    if backend == "unsloth":
        import unsloth  # noqa: F401  (before transformers, trl and peft: it patches them)
    import torch

    from unsloth_sft.model import load_model

    path = model_dir(models_root(args), size)
    run_dir = Path(tempfile.mkdtemp(prefix="unsloth-sft-gpu-bench-"))
    max_len = max(args.seq_len, args.bisect_hi if args.bisect else 0)
    cfg = bench_config(path, backend, max_len, args, run_dir)
    t_load = time.time()
    loaded = load_model(cfg)
    load_s = time.time() - t_load
    torch.cuda.reset_peak_memory_stats()
    reserved_after_load = torch.cuda.memory_reserved()
    timer = train_steps(loaded, cfg, args.seq_len, args.warmup_steps + args.steps)
    timed = timer.times[args.warmup_steps :] or timer.times
    tokens_per_step = args.seq_len * args.batch * args.grad_accum
    tokens_per_s = tokens_per_step * len(timed) / sum(timed)
    params = count_parameters(gemma2_config(SHAPES[size]))
    name = torch.cuda.get_device_name(0)
    peak = peak_flops(name, args.peak_tflops)
    result = {
        "model": f"gemma2-{size}",
        "backend": loaded.backend,
        "params": params,
        "trainable_params": loaded.trainable_params,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "grad_accum": args.grad_accum,
        "steps_timed": len(timed),
        "step_s": round(sum(timed) / len(timed), 3),
        "tokens_per_s": round(tokens_per_s, 1),
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 1024**3, 3),
        "reserved_after_load_gb": round(reserved_after_load / 1024**3, 3),
        "mfu": round(mfu(params, tokens_per_s, peak), 4) if peak else None,
        "peak_tflops": peak / 1e12 if peak else None,
        "load_s": round(load_s, 1),
        "attn_implementation": getattr(loaded.model.config, "_attn_implementation", None),
        "gpu": name,
    }
    if args.bisect:
        tried: dict[int, bool] = {}

        def try_fn(n: int) -> bool:
            tried[n] = fits(loaded, cfg, n)
            print(f"  seq {n}: {'trains' if tried[n] else 'out of memory'}", flush=True)
            return tried[n]

        result["longest_seq"] = longest_trainable(try_fn, args.bisect_lo, args.bisect_hi, args.bisect_step)
        result["bisect_tries"] = {str(k): v for k, v in sorted(tried.items())}
    return result


def run_build(args: argparse.Namespace) -> dict:
    """Save each requested model (random init, bf16) unless it is there already; built on the GPU when present."""
    import torch

    from unsloth_sft.tiny import tiny_model_path

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = {}
    for size in args.models:
        t = time.time()
        path = build_random_model(
            model_dir(models_root(args), size), SHAPES[size], tiny_model_path(), dtype="bfloat16", device=device
        )
        out[size] = {"path": str(path), "seconds": round(time.time() - t, 1)}
        free_memory()
    return out


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

    from unsloth_sft.atomic import write_json

    name = torch.cuda.get_device_name(0)
    work = Path(tempfile.mkdtemp(prefix="unsloth-sft-gpu-bench-"))
    print(f"building models {', '.join(args.models)} (random init, bf16) under {models_root(args)}", flush=True)
    rc, built = spawn(
        SCRIPT,
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
                SCRIPT,
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
        "command": "python bench/gpu.py " + " ".join(sys.argv[1:]),
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
    from unsloth_sft.atomic import write_json  # after the requirements check: it names a missing unsloth_sft

    if args.build:
        write_json(args.json_out, run_build(args)) if args.json_out else print(run_build(args))
        return 0
    import torch

    if not torch.cuda.is_available():
        print(
            "no CUDA GPU here: bench/gpu.py measures GPU throughput and VRAM; run it on a GPU machine "
            "(python bench/gpu.py --check shows the plan)",
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
