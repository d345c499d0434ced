"""The model and lora sections, and the rules that check them."""

from __future__ import annotations

from dataclasses import field
from typing import Literal

from pydantic.dataclasses import dataclass

from unsloth_sft.config.types import STRICT, Backend, Count, Layers, Names, Number
from unsloth_sft.core.errors import ConfigError


@dataclass(config=STRICT)
class ModelConfig:
    name: str = "tiny-gemma2"  # Hub id, local folder, or "tiny-gemma2" (built offline, ~200k params)
    backend: Backend = "auto"  # auto = unsloth when it imports
    max_seq_length: Count = 2048  # tokens; longer examples are truncated (see `unsloth-sft preview`)
    load_in_4bit: bool = True  # NF4 via bitsandbytes: ~4x less weight memory, QLoRA
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPUs that have it
    trust_remote_code: bool = False  # only for models whose code you have read
    chat_template: str | None = None  # a template name (gemma, llama3, chatml ...) or a .jinja file; None = the model's
    # a LoRA adapter to continue training (a run's adapter/ folder, a run folder, or a Hub id): loaded trainable on
    # model.name, which must be its base; its r, alpha, targets ... replace the lora section. None = a fresh LoRA
    adapter: str | None = None


@dataclass(config=STRICT)
class LoraConfig:
    r: int = 16  # rank: 8-64 typical; more = more capacity and memory
    alpha: int = 16  # scaling = alpha / r (or / sqrt(r) with rslora)
    dropout: Number = 0.0  # unsloth is fastest at 0
    target_modules: Names = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )  # every linear layer of a Gemma/Llama block; or one preset: all-linear, attention, mlp
    use_rslora: bool = False  # rank-stabilised scaling, helps at r >= 64
    use_dora: bool = False  # weight-decomposed LoRA (peft): often better at low rank, ~1.5-2x slower steps
    layers_to_transform: Layers = None  # adapt only these decoder layers ("0-3", "20-", [0, 5]); None = all
    bias: Literal["none", "all", "lora_only"] = "none"  # "none" is optimised in unsloth
    # "auto": unsloth's offloaded checkpointing on a GPU (~30% less VRAM, long context), none on a CPU, where
    # recomputing costs 21-41 % of throughput and memory is rarely the limit (bench/README.md)
    use_gradient_checkpointing: bool | Literal["unsloth", "auto"] = "auto"


def gradient_checkpointing(lora: LoraConfig) -> bool | str:
    """lora.use_gradient_checkpointing with "auto" resolved for this machine: "unsloth" on a GPU, False on a CPU."""
    if lora.use_gradient_checkpointing != "auto":
        return lora.use_gradient_checkpointing
    import torch

    return "unsloth" if torch.cuda.is_available() else False


def check_lora(lora: LoraConfig) -> None:
    """Bounds of a LoRA section that trains (finetune: full ignores the section, so a zero rank is fine there)."""
    if lora.r < 1:
        raise ConfigError(f"lora.r must be >= 1, got {lora.r}; use finetune: full to train without LoRA")
    if lora.alpha < 1:
        raise ConfigError(f"lora.alpha must be >= 1, got {lora.alpha}")
    if not 0 <= lora.dropout < 1:
        raise ConfigError(f"lora.dropout must be in [0, 1), got {lora.dropout}")
    if not lora.target_modules:
        raise ConfigError("lora.target_modules is empty; name the linear layers to adapt (e.g. q_proj, v_proj)")
    if lora.layers_to_transform is not None:
        layer_indices(lora.layers_to_transform, "lora.layers_to_transform")


def layer_indices(spec: str | list[int], key: str, num_layers: int | None = None) -> list[int]:
    """A layer range ("0-3", "20-", "-4" = the last four, "0,2,5") or a list of indices, as sorted indices.

    An open range ("20-", "-4") needs `num_layers`; without it the spec is only checked for its syntax.
    """
    fix = f"{key}: expected layer indices like [0, 1], '0-3', '20-' (to the last) or '-4' (the last four)"
    if isinstance(spec, list):
        if any(i < 0 for i in spec) or not spec:
            raise ConfigError(f"{fix}, got {spec}")
        indices = sorted(set(spec))
    else:
        indices = []
        for part in str(spec).replace(" ", "").split(","):
            first, dash, last = part.partition("-")
            if not (first.isdigit() or (dash and not first)) or not (last.isdigit() or not last):
                raise ConfigError(f"{fix}, got {spec!r}")
            if not dash:
                indices.append(int(first))
            elif num_layers is None:
                continue  # syntax checked; the model's depth resolves an open range
            elif not first:
                indices.extend(range(max(0, num_layers - int(last)), num_layers))
            else:
                indices.extend(range(int(first), (int(last) if last else num_layers - 1) + 1))
        indices = sorted(set(indices))
    if num_layers is not None and (not indices or indices[-1] >= num_layers):
        raise ConfigError(f"{key} {spec!r}: this model has {num_layers} layers (0-{num_layers - 1})")
    return indices
