"""Parameter groups (embeddings, norms, attention, mlp, lm_head, lora) and freezing them for a full fine-tune."""

from __future__ import annotations

import re
from fnmatch import fnmatch

from unsloth_sft.config.model import layer_indices
from unsloth_sft.config.train import TrainConfig
from unsloth_sft.config.types import FREEZE_GROUPS
from unsloth_sft.core.errors import ModelError


def module_group(name: str) -> str:
    """The group of a parameter or module by its name: embeddings, norms, attention, mlp, lm_head or other."""
    parts = name.lower().split(".")
    leaf = parts[-2] if parts[-1] in ("weight", "bias") and len(parts) > 1 else parts[-1]
    if "lm_head" in parts:
        return "lm_head"
    if "embed" in leaf or leaf in ("wte", "wpe"):
        return "embeddings"
    if "norm" in leaf or leaf.startswith("ln_"):  # before attention: Gemma-3's q_norm sits inside self_attn
        return "norms"
    if any("attn" in p or "attention" in p for p in parts):
        return "attention"
    if any(p in ("mlp", "feed_forward", "ffn") or "mlp" in p for p in parts):
        return "mlp"
    return "other"


def num_layers(model) -> int:
    """Decoder layers of a model (its config's num_hidden_layers / n_layer)."""
    config = getattr(model, "config", None)
    n = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if not n:
        raise ModelError("this model's config names no layer count (num_hidden_layers); remove the layer range")
    return int(n)


LAYER_INDEX = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")  # model.layers.3.mlp / transformer.h.3.attn


def freeze(model, t: TrainConfig) -> list[str]:
    """Freeze parameters for a full fine-tune: train.freeze groups or name globs, and decoder layers outside
    train.trainable_layers. Returns the frozen parameter names. Tied weights are one tensor: freezing the
    embeddings freezes a tied lm_head too."""
    if not t.freeze and t.trainable_layers is None:
        return []
    params = list(model.named_parameters(remove_duplicate=False))  # a tied lm_head answers to its own name too
    frozen: set[str] = set()
    for pattern in t.freeze:
        hits = {
            n for n, _ in params if (module_group(n) == pattern if pattern in FREEZE_GROUPS else fnmatch(n, pattern))
        }
        if not hits:
            raise ModelError(
                f"train.freeze '{pattern}' matches no parameter of this model; use a group ({', '.join(FREEZE_GROUPS)}) "
                f"or a glob over names like {params[len(params) // 2][0]}"
            )
        frozen |= hits
    if t.trainable_layers is not None:
        keep = set(layer_indices(t.trainable_layers, "train.trainable_layers", num_layers(model)))
        frozen |= {n for n, _ in params if (m := LAYER_INDEX.search(n)) and int(m.group(1)) not in keep}
    for name, param in params:
        if name in frozen:
            param.requires_grad_(False)
    if not any(p.requires_grad for _, p in params):
        raise ModelError("train.freeze / trainable_layers freeze every parameter; leave something to train")
    return sorted(frozen)


def params_by_group(model) -> dict[str, dict[str, int]]:
    """Trainable and total parameters per group (embeddings, norms, attention, mlp, lm_head, lora, other)."""
    out: dict[str, dict[str, int]] = {}
    for name, param in model.named_parameters():
        group = "lora" if "lora_" in name else module_group(name)
        row = out.setdefault(group, {"trainable": 0, "total": 0})
        row["total"] += param.numel()
        row["trainable"] += param.numel() if param.requires_grad else 0
    return out


def format_groups(groups: dict[str, dict[str, int]]) -> str:
    """The parameter groups as a few aligned lines, printed before training."""
    lines = ["parameters by group (trainable / total):"]
    for group, row in groups.items():
        lines.append(f"  {group:<11} {row['trainable']:>13,} / {row['total']:,}")
    return "\n".join(lines)
