"""Model loading: unsloth's FastLanguageModel or transformers + bitsandbytes + peft, LoRA or full fine-tuning."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from unsloth_sft.chat_templates import set_chat_template
from unsloth_sft.config import (
    FREEZE_GROUPS,
    TARGET_PRESETS,
    LoraConfig,
    RunConfig,
    TrainConfig,
    gradient_checkpointing,
    layer_indices,
)
from unsloth_sft.errors import ModelError
from unsloth_sft.gguf_models import CATALOGUE, gguf_model_path, is_gguf_name
from unsloth_sft.tiny import TINY_NAME, tiny_model_path


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    backend: str  # "unsloth" or "transformers"
    path: str  # where the base weights came from (a folder or a Hub id)
    trainable_params: int
    total_params: int


def resolve_model_path(name: str) -> str:
    """A local folder for `name`: the tiny model is built and packaged GGUF models converted on first use (then
    cached); Hub ids pass through unchanged."""
    if name == TINY_NAME:
        return str(tiny_model_path())
    if is_gguf_name(name):
        return str(gguf_model_path(name))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model.name '{name}': folder has no config.json, so it is not a Hugging Face model folder"
            )
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelError(
            f"model.name '{name}': no such folder, and not a Hub id like org/model, a .gguf file or a "
            f"packaged model ({', '.join(CATALOGUE)})"
        )
    return name


def unsloth_available() -> bool:
    """True when unsloth can be imported here (on a GPU, or with unsloth 2026.10.9's CPU backend)."""
    if importlib.util.find_spec("unsloth") is None:
        return False
    try:
        import unsloth  # noqa: F401
    except Exception:  # old releases raise on a machine with no GPU
        return False
    return True


def choose_backend(requested: str) -> str:
    if requested == "transformers":
        return "transformers"
    if unsloth_available():
        return "unsloth"
    if requested == "unsloth":
        raise ModelError(
            "model.backend is unsloth but unsloth does not import here; pip install unsloth, or use backend: transformers"
        )
    return "transformers"


def torch_dtype(name: str):
    import torch

    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


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


def count_params(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _hub_error(name: str, err: Exception) -> ModelError:
    first = (str(err).splitlines() or [type(err).__name__])[0][:200]
    return ModelError(
        f"model.name '{name}': could not load ({first}); check the id or folder, and the network for Hub ids"
    )


def load_base(cfg: RunConfig) -> LoadedModel:
    """The base model and tokenizer for `cfg` (unsloth's FastLanguageModel.from_pretrained, or transformers), with
    model.chat_template set, and train.freeze applied when fine-tuning fully. No adapters yet: `add_lora`."""
    backend = choose_backend(cfg.model.backend)
    if backend == "unsloth":
        import unsloth  # noqa: F401  (first: it patches transformers, trl and peft)
    from transformers import set_seed

    set_seed(cfg.train.seed)  # LoRA matrices are drawn after this (add_lora), before the Trainer seeds: same init
    path = resolve_model_path(cfg.model.name)
    loader = _load_unsloth if backend == "unsloth" else _load_transformers
    model, tokenizer = loader(cfg, path)
    set_chat_template(tokenizer, cfg.model.chat_template, backend)  # saved with the adapter / merged model
    if cfg.finetune == "full":
        freeze(model, cfg.train)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, backend, path, *count_params(model))


def add_lora(cfg: RunConfig, loaded: LoadedModel) -> LoadedModel:
    """LoRA adapters on the base (unsloth's get_peft_model, or peft's); the base as it is for finetune: full."""
    if cfg.finetune == "full":
        return loaded
    adapt = _lora_unsloth if loaded.backend == "unsloth" else _lora_transformers
    model = adapt(cfg, loaded.model)
    trainable, total = count_params(model)
    return dataclasses.replace(loaded, model=model, trainable_params=trainable, total_params=total)


def load_model(cfg: RunConfig) -> LoadedModel:
    """The base model with LoRA adapters attached (unless fine-tuning fully): load_base, then add_lora."""
    return add_lora(cfg, load_base(cfg))


def _load_unsloth(cfg: RunConfig, path: str):
    from unsloth import FastLanguageModel

    m = cfg.model
    try:
        return FastLanguageModel.from_pretrained(
            model_name=path,
            max_seq_length=m.max_seq_length,
            dtype=None if m.dtype == "auto" else torch_dtype(m.dtype),
            load_in_4bit=m.load_in_4bit,
            full_finetuning=cfg.finetune == "full",
            trust_remote_code=m.trust_remote_code,
            token=os.environ.get("HF_TOKEN"),
        )
    except (OSError, ValueError, RuntimeError) as err:
        raise _hub_error(m.name, err) from None


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


def _load_transformers(cfg: RunConfig, path: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    m = cfg.model
    dtype = torch_dtype(m.dtype)
    quant = None
    if m.load_in_4bit:
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,  # ~0.4 bit/param saved on the quantisation constants
            bnb_4bit_compute_dtype=dtype,
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=m.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path,
            quantization_config=quant,
            dtype=dtype,
            trust_remote_code=m.trust_remote_code,
            device_map={"": torch.cuda.current_device()} if torch.cuda.is_available() else None,
        )
    except (OSError, ValueError) as err:
        raise _hub_error(m.name, err) from None
    return model, tokenizer


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


def load_for_inference(model_path: str, adapter: str | None = None):
    """Load a model folder or Hub id (optionally with a LoRA adapter) for generation: (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(model_path)
    if adapter is not None:
        adapter_cfg = Path(adapter) / "adapter_config.json"
        if not adapter_cfg.is_file():
            raise ModelError(f"{adapter}: no adapter_config.json, so it is not a LoRA adapter folder")
    dtype = torch_dtype("auto")
    try:
        tokenizer = AutoTokenizer.from_pretrained(adapter or path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as err:
        raise _hub_error(model_path, err) from None
    if adapter is not None:
        from peft import PeftModel

        check_adapter_base(adapter, model)
        model = PeftModel.from_pretrained(model, adapter)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    import torch

    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    return model, tokenizer


def check_adapter_base(adapter: str, model) -> None:
    """Refuse an adapter trained on a different architecture/shape than `model` (one line, both names)."""
    import json

    from safetensors import safe_open

    weights = Path(adapter) / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{adapter}: no adapter_model.safetensors")
    params = dict(model.named_parameters())
    base_name = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    with safe_open(str(weights), "pt") as f:
        for key in f.keys():
            if ".lora_A." not in key:
                continue
            target = key.replace("base_model.model.", "", 1).replace(".lora_A.weight", ".weight")
            shape = f.get_slice(key).get_shape()
            if target not in params or params[target].shape[-1] != shape[-1]:
                raise ModelError(
                    f"{adapter}: adapter was trained on '{base_name}', which does not match this base model "
                    f"({target} missing or of another shape); pass the base model it was trained on"
                )
