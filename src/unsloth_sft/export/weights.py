"""Weights out: the LoRA adapter, merged 16-bit weights (the base reloaded un-quantised), a full fine-tune, unsloth's 4-bit."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from unsloth_sft.core.errors import ModelError, RunError
from unsloth_sft.core.files import atomic_dir


def save_adapter(model, tokenizer, target: Path) -> Path:
    """LoRA adapter + tokenizer into `target` (a run's adapter/), atomically."""
    target = Path(target)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def merge_adapter(base_path: str, adapter_dir: Path, out_dir: Path, max_shard_size: str = "5GB") -> Path:
    """Reload the base in 16/32-bit, apply the adapter, merge, save safetensors + tokenizer + generation config.

    Never merges into 4-bit weights: the base is reloaded un-quantised (a pre-quantised bnb checkpoint is
    dequantised first), so the merged weights equal base + adapter in full precision.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unsloth_sft.models.backends import torch_dtype
    from unsloth_sft.models.load import check_adapter_base, check_adapter_files

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(f"{adapter_dir}: no LoRA adapter here (adapter_config.json missing); train first")
    check_adapter_files(adapter_dir)  # a damaged adapter: one line, before the base loads
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch_dtype("auto"))
    if getattr(base.config, "quantization_config", None):
        base = base.dequantize()
    check_adapter_base(str(adapter_dir), base)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
        spm = (
            Path(base_path) / "tokenizer.model"
        )  # transformers 5 does not save it; llama.cpp's Gemma converters need it
        if spm.is_file() and not (tmp / spm.name).exists():
            shutil.copy(spm, tmp / spm.name)
    return Path(out_dir)


def save_full(model, tokenizer, out_dir: Path, max_shard_size: str = "5GB") -> Path:
    """A fully fine-tuned model: save it as it is (it has no adapter to merge)."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


FORCED_4BIT_WHY = (
    "export method merged_4bit_forced needs the unsloth backend on a CUDA GPU: unsloth writes bitsandbytes 4-bit "
    "weights only from the live training model there"
)


def unsloth_only(method: str, backend: str) -> None:
    """merged_4bit_forced goes through unsloth's own saver on a GPU; say exactly why not anywhere else."""
    import torch

    if backend != "unsloth" or not torch.cuda.is_available():
        raise RunError(
            f"{FORCED_4BIT_WHY} (here: {backend} backend, {'GPU' if torch.cuda.is_available() else 'no GPU'}); "
            "use merged_16bit, or gguf with export.gguf_quant: [q4_k_m] for a 4-bit file"
        )


def export_unsloth(model, tokenizer, method: str, out_dir: Path) -> Path:
    """unsloth's save_pretrained_merged with merged_4bit_forced, never allowed to install system packages."""
    os.environ["UNSLOTH_AUTO_INSTALL"] = "0"  # without it, a missing tool is fetched by git clone / apt-get install
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained_merged(str(tmp), tokenizer, save_method=method)
    return Path(out_dir)
