"""Loading weights: the base for training (either backend), and a model (with its adapter) for generation."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unsloth_sft.config.run import RunConfig
from unsloth_sft.core.errors import ModelError
from unsloth_sft.core.quiet import warn
from unsloth_sft.models.backends import choose_backend, torch_dtype
from unsloth_sft.models.chat_templates import set_chat_template
from unsloth_sft.models.params import freeze
from unsloth_sft.models.sources import resolve_model_path
from unsloth_sft.runs.folder import RunDir


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    backend: str  # "unsloth" or "transformers"
    path: str  # where the base weights came from (a folder or a Hub id)
    trainable_params: int
    total_params: int


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
    context = getattr(model.config, "max_position_embeddings", None)
    if context and cfg.model.max_seq_length > context:
        warn(
            f"model.max_seq_length {cfg.model.max_seq_length} is beyond {cfg.model.name}'s context of {context} "
            f"tokens: positions past it were never trained; lower it to {context} or less"
        )
    if cfg.finetune == "full":
        freeze(model, cfg.train)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, backend, path, *count_params(model))


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


def load_for_inference(model_path: str, adapter: str | None = None):
    """Load a model folder or Hub id (optionally with a LoRA adapter) for generation: (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(model_path)
    if adapter is not None:
        check_adapter_files(adapter)  # before the base loads: a damaged adapter costs a second, not a model load
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


def check_adapter_files(adapter: str | Path) -> str | None:
    """An adapter folder that can be read: its config is JSON and its weights file is whole (a copy cut short, a
    full disk while saving). Cheap, so it runs before any model loads. Returns the base the adapter names."""
    import json

    from safetensors import safe_open

    folder = Path(adapter)
    config, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config.is_file():
        raise ModelError(f"{adapter}: no adapter_config.json, so it is not a LoRA adapter folder")
    if not weights.is_file():
        raise ModelError(f"{adapter}: no adapter_model.safetensors")
    fix = "the adapter is damaged or cut short: copy it again, or re-train (the run resumes from its last checkpoint)"
    try:
        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        with safe_open(str(weights), "pt") as f:
            for key in f.keys():
                f.get_slice(key).get_shape()
    except Exception as err:  # JSONDecodeError, safetensors' SafetensorError (a Rust error type)
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise ModelError(f"{adapter}: cannot read the adapter ({reason}); {fix}") from None
    size = weights.stat().st_size
    with open(weights, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
        end = max(
            (v["data_offsets"][1] for k, v in json.loads(f.read(header)).items() if k != "__metadata__"), default=0
        )
    if size < 8 + header + end:
        raise ModelError(f"{weights}: {size} bytes, its header promises {8 + header + end}; {fix}")
    return base


def check_adapter_base(adapter: str, model) -> None:
    """Refuse an adapter trained on a different architecture/shape than `model` (one line, both names)."""
    from safetensors import safe_open

    base_name = check_adapter_files(adapter)
    params = dict(model.named_parameters())
    with safe_open(str(Path(adapter) / "adapter_model.safetensors"), "pt") as f:
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


def load_run_model(run: RunDir | str | Path, prefer: str = "merged"):
    """A run's tuned model for generation, as `RunDir.model` chooses it: (model, tokenizer)."""
    which = RunDir.of(run).model(prefer)
    return load_for_inference(which.weights, which.adapter)
