"""Loading weights: the base for training (either backend), and a model (with its adapter) for generation."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unsloth_sft.config.run import RunConfig
from unsloth_sft.core.errors import ModelError
from unsloth_sft.core.quiet import warn
from unsloth_sft.models.backends import choose_backend, torch_dtype, unsloth_dtype
from unsloth_sft.models.chat_templates import set_chat_template
from unsloth_sft.models.params import freeze
from unsloth_sft.models.sources import resolve_model_path
from unsloth_sft.runs.folder import CHECKPOINTS, CONFIG, RunDir


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    backend: str  # "unsloth" or "transformers"
    path: str  # where the base weights came from (a folder or a Hub id)
    trainable_params: int
    total_params: int
    started_from: dict | None = None  # model.adapter: where the adapter came from (`adapter_origin`), else None


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
    if cfg.model.adapter:  # by name, before the weights load; add_lora checks the shapes
        check_adapter_name(resolve_adapter(cfg.model.adapter, download=False), cfg.model.name, path)
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
            dtype=unsloth_dtype(m.dtype),  # on a CPU: bf16 only with bf16 matmul units, as the transformers backend
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


def check_adapter_base(adapter: str, model, model_name: str | None = None) -> None:
    """Refuse an adapter trained on another architecture or shape than `model` (one line, both names). Shapes are
    read from the layers' in/out features, which 4-bit layers keep (their packed weight is [n, 1])."""
    from safetensors import safe_open

    base_name = check_adapter_files(adapter)
    modules = dict(model.named_modules())
    with safe_open(str(Path(adapter) / "adapter_model.safetensors"), "pt") as f:
        for key in f.keys():
            part = ".lora_A." if ".lora_A." in key else ".lora_B." if ".lora_B." in key else None
            if part is None:
                continue
            target = key.replace("base_model.model.", "", 1).split(part)[0]
            module = modules.get(target)
            shape = f.get_slice(key).get_shape()
            inputs = getattr(module, "in_features", None) or getattr(module, "nx", None)
            outputs = getattr(module, "out_features", None) or getattr(module, "nf", None)
            want, have = (shape[-1], inputs) if part == ".lora_A." else (shape[0], outputs)
            if module is None or (have is not None and want != have):
                side = "inputs" if part == ".lora_A." else "outputs"
                found = "no such layer" if module is None else f"{have} {side}"
                raise ModelError(
                    f"{adapter}: the adapter does not match {f'model.name {model_name!r}' if model_name else 'this base model'}"
                    f" ({target}: the adapter expects {want} {side}, the model has {found}); it was trained on "
                    f"'{base_name}': pass that base model"
                )


@dataclass(frozen=True)
class AdapterSource:
    """Where model.adapter points: `path` a local adapter folder, `base` the model it was trained on (its
    adapter_config.json), `run` the run folder that made it (None for a Hub adapter), `revision` the Hub commit."""

    given: str
    path: Path
    base: str | None
    run: Path | None = None
    revision: str | None = None


def resolve_adapter(name: str, download: bool = True) -> AdapterSource:
    """model.adapter as a local adapter folder: a folder with adapter_config.json (a run's adapter/, a checkpoint),
    a run folder (its adapter/), or a Hub id (its adapter files, downloaded once; `download=False`: the cache only)."""
    path = Path(name).expanduser()
    run = None
    if path.is_dir() and not (path / "adapter_config.json").is_file():
        folder = RunDir(path)
        if not folder.config_file.is_file():
            raise ModelError(
                f"model.adapter '{name}': neither a LoRA adapter folder (no adapter_config.json) nor a run folder "
                "(no config.yaml); pass a run folder, its adapter/ folder, or a Hub id (user/repo)"
            )
        if not folder.has_adapter:
            latest = folder.latest_checkpoint()
            why = (
                "a full fine-tune (merged/, no adapter): set model.name to its merged/ folder instead"
                if folder.kind == "full"
                else f"unfinished, no adapter/ yet: finish it, or pass {latest}"
                if latest
                else "no adapter/ and no checkpoint: train it first"
            )
            raise ModelError(f"model.adapter '{name}': the run has no LoRA adapter ({why})")
        run, path = folder.path, folder.adapter
    elif path.is_dir():
        owner = path.parent.parent if path.parent.name == CHECKPOINTS else path.parent
        run = owner if (owner / CONFIG).is_file() else None
    elif name.startswith((".", "/", "~")) or name.count("/") < 1 or not all(name.split("/")):
        raise ModelError(f"model.adapter '{name}': no such folder, and not a Hub id like user/repo")
    else:
        return _hub_adapter(name, download)
    return AdapterSource(name, path.absolute(), _adapter_base(name, path), run.absolute() if run else None)


def _hub_adapter(name: str, download: bool) -> AdapterSource:
    """A Hub adapter: user/repo (its top, else its adapter/ folder, where a push of merged + lora puts it) or
    user/repo/FOLDER (e.g. last-checkpoint, which train.hub_strategy: checkpoint pushes)."""
    from huggingface_hub import snapshot_download

    parts = name.split("/")
    repo, under = "/".join(parts[:2]), "/".join(parts[2:])
    folders = [under] if under else ["", "adapter"]
    files = ("adapter_config.json", "adapter_model.safetensors")
    try:
        local = snapshot_download(
            repo,
            allow_patterns=[f"{folder}/{file}".lstrip("/") for folder in folders for file in files],
            token=os.environ.get("HF_TOKEN"),
            local_files_only=not download,
        )
    except Exception as err:  # RepositoryNotFoundError, LocalEntryNotFoundError, HTTP and network errors
        first = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise ModelError(
            f"model.adapter '{name}': could not download the adapter ({first}); check the repo id, HF_TOKEN for a "
            "private repo, and the network"
        ) from None
    found = [Path(local) / f for f in folders if (Path(local) / f / "adapter_config.json").is_file()]
    if not found:
        where = f"{under}/" if under else "its top or adapter/"
        raise ModelError(f"model.adapter '{name}': the repo has no adapter_config.json in {where}; not a LoRA adapter")
    return AdapterSource(name, found[0], _adapter_base(name, found[0]), revision=Path(local).name)


def _adapter_base(name: str, folder: Path) -> str | None:
    """The adapter's base model, after checking it is a whole LoRA adapter (before any model loads)."""
    import json

    base = check_adapter_files(folder)
    kind = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("peft_type")
    if kind not in (None, "LORA"):
        raise ModelError(f"model.adapter '{name}': a {kind} adapter; only LoRA adapters can be continued")
    return base


def _name_key(name: str) -> str:
    """A model name compared across machines and mirrors: its last part, without unsloth's 4-bit suffixes."""
    key = str(name).rstrip("/").replace("\\", "/").rsplit("/", 1)[-1].lower()
    for suffix in ("-unsloth-bnb-4bit", "-bnb-4bit", "-unsloth"):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def check_adapter_name(source: AdapterSource, model_name: str, path: str) -> None:
    """Refuse model.name when the adapter names another base (its adapter_config.json's base_model_name_or_path,
    or the model.name of the run that made it). Names agree by their last part (a local copy, unsloth's -bnb-4bit
    mirror of a Hub model), so the shape check in add_lora stays the final word."""
    names = {source.base} if source.base else set()
    saved = RunDir(source.run).saved_config() if source.run else None
    if saved and (saved.get("model") or {}).get("name"):
        names.add(saved["model"]["name"])
    if not names:
        return
    ours = {_name_key(model_name), _name_key(path)}
    if any(n in (model_name, path) or _name_key(n) in ours for n in names):
        return
    trained = source.base or next(iter(names))
    raise ModelError(
        f"model.adapter '{source.given}' was trained on '{trained}' (adapter_config.json base_model_name_or_path), "
        f"not on model.name '{model_name}'; set model.name to its base, or start a fresh LoRA without model.adapter"
    )


def adapter_origin(source: AdapterSource) -> dict:
    """What a run records of the adapter it started from (environment.json, metrics.json, the model card)."""
    origin = {"adapter": source.given, "path": str(source.path), "base_model": source.base}
    if source.revision:
        origin["revision"] = source.revision
    if source.run is not None:
        metrics = RunDir(source.run).metrics() or {}
        origin.update(run=str(source.run), run_steps=metrics.get("steps"), run_last_loss=metrics.get("last_loss"))
    return origin


def load_run_model(run: RunDir | str | Path, prefer: str = "merged"):
    """A run's tuned model for generation, as `RunDir.model` chooses it: (model, tokenizer)."""
    which = RunDir.of(run).model(prefer)
    return load_for_inference(which.weights, which.adapter)
