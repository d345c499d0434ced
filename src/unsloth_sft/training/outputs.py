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
    """Package versions and device, saved beside what the run made."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

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
        "packages": versions,
    }
