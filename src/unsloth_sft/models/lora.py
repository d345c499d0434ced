"""LoRA adapters on a loaded base: the target modules (or a preset), the layers, unsloth's or peft's get_peft_model."""

from __future__ import annotations

import dataclasses

from unsloth_sft.config.model import LoraConfig, gradient_checkpointing, layer_indices
from unsloth_sft.config.run import RunConfig
from unsloth_sft.config.types import TARGET_PRESETS
from unsloth_sft.core.errors import ModelError
from unsloth_sft.models.load import LoadedModel, count_params
from unsloth_sft.models.params import module_group, num_layers


def linear_module_names(model) -> list[str]:
    """Names (last component) of the linear layers in a model, the valid LoRA targets."""
    import torch

    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt", "Conv1D"):
            leaf = name.rsplit(".", 1)[-1]
            if leaf != "lm_head":
                names.add(leaf)
    return sorted(names)


def check_target_modules(model, targets: list[str]) -> None:
    have = linear_module_names(model)
    missing = [t for t in targets if t not in have]
    if missing:
        raise ModelError(f"lora.target_modules {missing} not in this model; its linear layers are: {', '.join(have)}")


def lora_targets(model, lora: LoraConfig) -> list[str]:
    """lora.target_modules, with a preset (all-linear, attention, mlp) resolved to this model's linear layer names."""
    if len(lora.target_modules) != 1 or lora.target_modules[0] not in TARGET_PRESETS:
        check_target_modules(model, lora.target_modules)
        return list(lora.target_modules)
    preset, have = lora.target_modules[0], set(linear_module_names(model))
    if preset == "all-linear":
        return sorted(have)
    names = sorted(
        {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if module_group(name) == preset} & have
    )
    if not names:
        raise ModelError(f"lora.target_modules {preset}: no {preset} linear layers found; name them, e.g. q_proj")
    return names


def lora_layers(model, lora: LoraConfig) -> list[int] | None:
    """lora.layers_to_transform as layer indices of this model (None: every layer)."""
    if lora.layers_to_transform is None:
        return None
    return layer_indices(lora.layers_to_transform, "lora.layers_to_transform", num_layers(model))


def add_lora(cfg: RunConfig, loaded: LoadedModel) -> LoadedModel:
    """LoRA adapters on the base (unsloth's get_peft_model, or peft's); the base as it is for finetune: full."""
    if cfg.finetune == "full":
        return loaded
    adapt = _lora_unsloth if loaded.backend == "unsloth" else _lora_transformers
    model = adapt(cfg, loaded.model)
    trainable, total = count_params(model)
    return dataclasses.replace(loaded, model=model, trainable_params=trainable, total_params=total)


def _lora_unsloth(cfg: RunConfig, model):
    from unsloth import FastLanguageModel

    lora = cfg.lora
    return FastLanguageModel.get_peft_model(
        model,
        r=lora.r,
        target_modules=lora_targets(model, lora),
        layers_to_transform=lora_layers(model, lora),
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        bias=lora.bias,
        use_gradient_checkpointing=gradient_checkpointing(lora),
        random_state=cfg.train.seed,
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,  # unsloth 2026.10.9 passes it on to peft's LoraConfig (its kernels skip DoRA)
    )


def _lora_transformers(cfg: RunConfig, model):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    lora = cfg.lora
    targets, layers = lora_targets(model, lora), lora_layers(model, lora)
    checkpointing = bool(gradient_checkpointing(lora))
    if cfg.model.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        layers_to_transform=layers,
        bias=lora.bias,
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)
