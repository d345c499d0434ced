"""What training leaves beside the weights: the loss curve and the environment it ran in."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from unsloth_sft.core.files import atomic_file
from unsloth_sft.core.hardware import cpu_info


def plot_loss(
    history: list[dict], path: Path, title: str = "training loss", evals: list[dict] | None = None, best=None
) -> Path:
    """Save the loss curve (train, and eval when evaluated during training) as a PNG (matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], marker=".", label="train")
    if evals:
        ax.plot([h["step"] for h in evals], [h["eval_loss"] for h in evals], marker="o", label="eval")
        if best is not None:
            ax.axvline(best, color="grey", linestyle="--", linewidth=1, label=f"best (step {best})")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return Path(path)


def environment() -> dict[str, Any]:
    """Package versions, device and the unsloth switches set, saved beside what the run made."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from unsloth_sft.core.allocator import settings as allocator_settings
    from unsloth_sft.core.hardware import dtype_reason
    from unsloth_sft.models.backends import dtype_name, unsloth_settings

    versions = {}
    for name in (
        "torch",
        "transformers",
        "trl",
        "peft",
        "datasets",
        "accelerate",
        "bitsandbytes",
        "unsloth",
        "unsloth_zoo",
    ):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    cpu = cpu_info()
    return {
        "python": platform.python_version(),
        "device": device,
        "cpu": f"{cpu['model']}, {cpu['cores']} cores",
        "cpu_flags": " ".join(cpu["flags"]),
        "dtype_auto": f"{dtype_name('auto')} ({dtype_reason() if not torch.cuda.is_available() else 'GPU'})",
        "threads": torch.get_num_threads(),
        "allocator": allocator_settings(),  # glibc MALLOC_* and OMP_NUM_THREADS (core/allocator.py)
        "packages": versions,
        "unsloth_workarounds": unsloth_settings(),  # e.g. UNSLOTH_BNB_NF4_LINEAR=0 (torch 2.11 + CUDA): who set it, why
    }


def compute_dtype(model, args=None) -> str:
    """The dtype training computes in: the Trainer's mixed precision (bf16/fp16), else a 4-bit base's compute dtype,
    else the floating weights' own (most of them by count); 'bfloat16 (weights float32)' when those differ."""
    from collections import Counter

    counts: Counter = Counter()
    for p in model.parameters():
        if p.is_floating_point():
            counts[str(p.dtype).removeprefix("torch.")] += p.numel()
    weights = counts.most_common(1)[0][0] if counts else None
    quant = getattr(getattr(model, "config", None), "quantization_config", None)
    quant = quant.to_dict() if hasattr(quant, "to_dict") else quant or {}
    four_bit = (
        str(quant.get("bnb_4bit_compute_dtype") or "").removeprefix("torch.") if quant.get("load_in_4bit") else ""
    )
    mixed = "bfloat16" if getattr(args, "bf16", False) else "float16" if getattr(args, "fp16", False) else ""
    compute = mixed or four_bit or weights or "unknown"
    notes = [f"{'4-bit base, ' if four_bit else ''}weights {weights}"] if weights and weights != compute else []
    notes += ["4-bit base"] if four_bit and not notes else []
    return f"{compute} ({notes[0]})" if notes else compute
