"""What the GPU benchmark's worker processes run: build the random models, then train one model with one backend
for throughput, peak VRAM and (with --bisect) the longest sequence. The driver is `bench.gpu`
(`python -m bench.gpu --worker ...`, `--build`)."""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

from bench.common import (
    GEMMA2_2B,
    GEMMA2_9B,
    build_random_model,
    count_parameters,
    gemma2_config,
    load_model,
    longest_trainable,
)

SHAPES = {"2b": GEMMA2_2B, "9b": GEMMA2_9B}
BACKENDS = ("unsloth", "transformers")
# Dense bf16 tensor-core peak, FLOP/s (vendor datasheets, no sparsity). H200 = H100 compute, more/faster memory.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12}


# ---------------------------------------------------------------- names and numbers


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
    from unsloth_sft.core.paths import cache_root

    return args.models_dir or cache_root() / "gpu-models"


# ---------------------------------------------------------------- one model and backend


def bench_config(
    path: Path, backend: str, max_seq_length: int, args: argparse.Namespace, run_dir: Path, load_in_4bit: bool = True
):
    """The same RunConfig for both backends: QLoRA r on all linear layers, gradient checkpointing, 8-bit AdamW."""
    from unsloth_sft.config.load import load_config

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

    from unsloth_sft.training.trainer import build_trainer

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
        from unsloth_sft.models.backends import apply_unsloth_workarounds

        apply_unsloth_workarounds()  # as a run does: before unsloth reads its switches (a user's own setting wins)
        import unsloth  # noqa: F401  (before transformers, trl and peft: it patches them)
    import torch

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
    if backend == "unsloth":
        from unsloth_sft.models.backends import unsloth_settings

        result["unsloth_workarounds"] = unsloth_settings()  # the switches this row ran with, and who set them
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

    from unsloth_sft.models.tiny import tiny_model_path

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
