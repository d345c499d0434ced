"""LoRA adapters on a loaded base: the target modules (or a preset), the layers, unsloth's or peft's get_peft_model."""

from __future__ import annotations

import dataclasses

from unsloth_sft.config.model import LoraConfig, gradient_checkpointing, layer_indices
from unsloth_sft.config.run import RunConfig
from unsloth_sft.config.types import TARGET_PRESETS
from unsloth_sft.core.errors import ModelError
from unsloth_sft.models.load import (
    LoadedModel,
    adapter_origin,
    check_adapter_base,
    count_params,
    resolve_adapter,
)
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
    """LoRA adapters on the base (unsloth's get_peft_model, or peft's); model.adapter's, trainable, instead of fresh
    ones when set; the base as it is for finetune: full."""
    if cfg.finetune == "full":
        return loaded
    started_from = None
    if cfg.model.adapter:
        source = resolve_adapter(cfg.model.adapter, download=False)  # downloaded by `with_adapter` (begin)
        check_adapter_base(str(source.path), loaded.model, cfg.model.name)  # before the adapter attaches
        model = _continue_adapter(cfg, loaded, source.path)
        started_from = adapter_origin(source)
    else:
        adapt = _lora_unsloth if loaded.backend == "unsloth" else _lora_transformers
        model = adapt(cfg, loaded.model)
    trainable, total = count_params(model)
    return dataclasses.replace(
        loaded, model=model, trainable_params=trainable, total_params=total, started_from=started_from
    )


ADAPTER_KEYS = {  # lora section key -> adapter_config.json key (peft's LoraConfig)
    "r": "r",
    "alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "target_modules": "target_modules",
    "use_rslora": "use_rslora",
    "use_dora": "use_dora",
    "layers_to_transform": "layers_to_transform",
    "bias": "bias",
}


def with_adapter(cfg: RunConfig) -> tuple[RunConfig, str | None]:
    """cfg with model.adapter's LoRA settings as its lora section (the adapter's shapes decide them; the config's
    own are not used), and one line saying so, naming the keys the config set otherwise. No adapter: (cfg, None).
    Reads (or downloads) only the adapter files: runs before any model loads."""
    import json

    if not cfg.model.adapter or cfg.finetune == "full":
        return cfg, None
    source = resolve_adapter(cfg.model.adapter)
    if source.run is not None and source.run == cfg.run_dir.absolute():
        raise ModelError(
            f"model.adapter '{cfg.model.adapter}' is this run's own folder; choose another run_name for the new run"
        )
    saved = json.loads((source.path / "adapter_config.json").read_text(encoding="utf-8"))
    ours = dataclasses.asdict(cfg.lora)
    taken = {key: saved[name] for key, name in ADAPTER_KEYS.items() if saved.get(name) is not None}
    if isinstance(taken.get("target_modules"), str):  # a regex (some unsloth adapters): kept as one name
        taken["target_modules"] = [taken["target_modules"]]
    if isinstance(taken.get("layers_to_transform"), int):
        taken["layers_to_transform"] = [taken["layers_to_transform"]]
    if "layers_to_transform" not in taken:
        taken["layers_to_transform"] = None
    for key in ("target_modules", "layers_to_transform"):
        if isinstance(taken[key], list):
            taken[key] = sorted(taken[key])
    differ = [
        f"lora.{k} {ours[k]!r}"
        for k, v in taken.items()
        if (sorted(ours[k]) if isinstance(ours[k], list) else ours[k]) != v
    ]
    taken["dropout"] = float(taken.get("dropout", ours["dropout"]))
    if isinstance(taken.get("alpha"), float) and taken["alpha"].is_integer():
        taken["alpha"] = int(taken["alpha"])
    try:
        lora = LoraConfig(**{**ours, **taken})
    except ValueError as err:  # pydantic's ValidationError: a setting the lora section cannot hold
        first = str(err).splitlines()[1:2] or [type(err).__name__]
        raise ModelError(
            f"model.adapter '{cfg.model.adapter}': adapter_config.json has LoRA settings this project cannot "
            f"continue ({first[0].strip()}); start a fresh LoRA without model.adapter"
        ) from None
    line = (
        f"model.adapter {cfg.model.adapter}: continuing its LoRA (r {lora.r}, alpha {lora.alpha}, "
        f"{len(lora.target_modules)} target modules); the lora section is taken from the adapter"
        + (f", not the config's ({', '.join(differ)})" if differ else "")
    )
    return dataclasses.replace(cfg, lora=lora), line


def _continue_adapter(cfg: RunConfig, loaded: LoadedModel, adapter):
    """The adapter loaded trainable onto the base with peft's PeftModel.from_pretrained(is_trainable=True), prepared
    as each backend prepares a fresh LoRA. With unsloth it is what FastLanguageModel.from_pretrained does with an
    adapter path (unsloth/models/loader.py on a GPU: then patch_peft_model, its LoRA kernels; unsloth_zoo/cpu/loader.py
    on its CPU backend: _prepare, then _attach), except that the base is model.name, loaded and checked, where
    unsloth would load whatever base the adapter names."""
    from peft import PeftModel

    model, checkpointing = loaded.model, gradient_checkpointing(cfg.lora)
    if loaded.backend != "unsloth":
        model = _prepare(cfg, model, bool(checkpointing))
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    from unsloth import FastLanguageModel

    patch = getattr(FastLanguageModel, "patch_peft_model", None)  # the GPU loader's; the CPU backend has none
    if patch is not None:
        return patch(PeftModel.from_pretrained(model, str(adapter), is_trainable=True), checkpointing)
    FastLanguageModel._prepare(model, checkpointing)
    if checkpointing in (True, "unsloth"):
        model.enable_input_require_grads()
    model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    FastLanguageModel._attach(model)
    return model


def _prepare(cfg: RunConfig, model, checkpointing: bool):
    """k-bit preparation (4-bit) or gradient checkpointing, before peft wraps the model (transformers backend)."""
    from peft import prepare_model_for_kbit_training

    if cfg.model.load_in_4bit:
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


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
    from peft import LoraConfig, get_peft_model

    lora = cfg.lora
    targets, layers = lora_targets(model, lora), lora_layers(model, lora)
    model = _prepare(cfg, model, bool(gradient_checkpointing(lora)))
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
