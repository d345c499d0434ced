"""Export: LoRA adapter, merged 16-bit weights (reloaded un-quantised), unsloth's GPU formats, model card, Hub."""

from __future__ import annotations

import os
from pathlib import Path

from unsloth_sft.config import RunConfig
from unsloth_sft.errors import ConfigError, ModelError, RunError
from unsloth_sft.runs import RunDir, atomic_dir


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

    from unsloth_sft.model import check_adapter_base, torch_dtype

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(f"{adapter_dir}: no LoRA adapter here (adapter_config.json missing); train first")
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch_dtype("auto"))
    if getattr(base.config, "quantization_config", None):
        base = base.dequantize()
    check_adapter_base(str(adapter_dir), base)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def save_full(model, tokenizer, out_dir: Path, max_shard_size: str = "5GB") -> Path:
    """A fully fine-tuned model: save it as it is (it has no adapter to merge)."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def unsloth_only(method: str, backend: str) -> None:
    """merged_4bit_forced and gguf go through unsloth's own savers on a GPU; say so clearly anywhere else."""
    import torch

    if backend != "unsloth" or not torch.cuda.is_available():
        alt = (
            "use merged_16bit (then llama.cpp's convert_hf_to_gguf.py for GGUF)"
            if method == "gguf"
            else "use merged_16bit"
        )
        raise RunError(
            f"export method {method} needs the unsloth backend on a CUDA GPU (here: {backend}, "
            f"{'GPU' if torch.cuda.is_available() else 'no GPU'}); {alt}"
        )


def export_unsloth(model, tokenizer, method: str, out_dir: Path, quantization_method: str) -> Path:
    """unsloth's save_pretrained_merged (4-bit forced) or save_pretrained_gguf (needs llama.cpp)."""
    with atomic_dir(out_dir) as tmp:
        if method == "merged_4bit_forced":
            model.save_pretrained_merged(str(tmp), tokenizer, save_method="merged_4bit_forced")
        else:
            model.save_pretrained_gguf(str(tmp), tokenizer, quantization_method=quantization_method)
    return Path(out_dir)


def model_card(cfg: RunConfig, metrics: dict | None, eval_metrics: dict | None, kind: str) -> str:
    """README.md with Hub YAML metadata, the training config, metrics, and how to load the model."""
    import yaml

    from unsloth_sft import tasks

    task = tasks.TASKS.get(cfg.data.task)  # the run's resolved task (config.yaml); None for auto (not yet resolved)
    source = base_source(cfg.model.name)
    base_model = (source or {}).get("base_model") or cfg.model.name
    meta = {
        "base_model": base_model,
        "datasets": [cfg.data.source] if not cfg.data.source.startswith("sample:") else [],
        "language": tasks.card_language(cfg.data.task, cfg.data.language),
        "library_name": "peft" if kind == "lora" else "transformers",
        "license": cfg.export.license or (source or {}).get("license") or "other",
        "tags": ["unsloth", "trl", "sft"]
        + (["lora"] if cfg.finetune != "full" else [])
        + list(task.tags if task else ()),
        "pipeline_tag": "text-generation",
    }
    repo = cfg.export.push_to_hub or f"{cfg.run_name}"
    if kind == "lora":
        load = (
            "```python\nfrom peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo}")\ntokenizer = AutoTokenizer.from_pretrained("{repo}")\n```'
        )
    else:
        load = (
            "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'model = AutoModelForCausalLM.from_pretrained("{repo}")\ntokenizer = AutoTokenizer.from_pretrained("{repo}")\n```'
        )
    parts = [
        "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---",
        f"# {cfg.run_name}\n\nA {'LoRA adapter for' if kind == 'lora' else 'fine-tune of'} `{base_model}`, trained "
        f"with unsloth-sft (TRL `SFTTrainer`{', peft LoRA' if cfg.finetune != 'full' else ''}) "
        f"on `{cfg.data.source}` ({cfg.data.task} task).",
        "## How to load\n\n" + load,
    ]
    if source:
        terms = (
            f" Its terms (`{source['license_file']}`, in this folder) apply to this model."
            if source["license_file"]
            else ""
        )
        parts.append(
            f"## Base model\n\n`{base_model}`, licence `{source['license']}`, converted from GGUF "
            f"(sha256 `{source['sha256']}`) by unsloth-sft's checked GGUF import.{terms}"
        )
    if metrics:
        keep = {
            k: metrics[k] for k in ("steps", "runtime_s", "tokens_per_s", "first_loss", "last_loss") if k in metrics
        }
        lines = [f"- {k}: {v}" for k, v in keep.items()]
        if metrics.get("stopped"):
            lines.append(f"- stopped at step {metrics['stopped']['step']}: {metrics['stopped']['reason']}")
        best = metrics.get("best")
        if best and best.get("step") is not None:
            which = (
                "these weights are that step's" if best.get("loaded_at_end") else "these weights are the last step's"
            )
            lines.append(f"- best step {best['step']} ({best['metric']} {best['value']:.4f}); {which}")
        parts.append("## Training\n\n" + "\n".join(lines))
    if eval_metrics:
        rows = ["| metric | base | tuned |", "|---|---|---|"]
        for name, values in eval_metrics.items():
            if isinstance(values, dict) and "tuned" in values:
                rows.append(f"| {name} | {values.get('base', '')} | {values['tuned']} |")
        parts.append("## Evaluation\n\n" + "\n".join(rows))
    config_yaml = yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
    parts.append("## Training config\n\n```yaml\n" + config_yaml + "```")
    return "\n\n".join(parts) + "\n"


def base_source(name: str) -> dict | None:
    """Where a GGUF-converted base came from (file hash, licence, upstream id, terms file); None for other bases."""
    from unsloth_sft.gguf_models import is_gguf_name, model_source
    from unsloth_sft.model import resolve_model_path

    return model_source(resolve_model_path(name)) if is_gguf_name(name) else None


def write_card(folder: Path, text: str, cfg: RunConfig) -> None:
    """The model card, plus the base model's terms file when its licence says it must travel with derivatives."""
    import shutil

    from unsloth_sft.atomic import atomic_write_text

    atomic_write_text(Path(folder) / "README.md", text)
    source = base_source(cfg.model.name)
    if source and source["license_file"]:
        from unsloth_sft.model import resolve_model_path

        shutil.copy(
            Path(resolve_model_path(cfg.model.name)) / source["license_file"], Path(folder) / source["license_file"]
        )


def hub_token() -> str | None:
    """The Hub token from HF_TOKEN or huggingface_hub's login cache; never from params."""
    from huggingface_hub import get_token

    return os.environ.get("HF_TOKEN") or get_token()


def push_folder(folder: Path, repo_id: str, private: bool = True, endpoint: str | None = None) -> str:
    """Create the repo if needed and upload `folder`; returns the commit URL. The token is never printed."""
    from huggingface_hub import HfApi

    if "/" not in repo_id:
        raise ConfigError(f"export.push_to_hub '{repo_id}' must look like user/repo")
    token = hub_token()
    if not token:
        raise RunError("no Hugging Face token: set the HF_TOKEN environment variable or run `huggingface-cli login`")
    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT"), token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message="Upload with unsloth-sft"
        )
    except Exception as err:  # HTTP errors carry the URL, never the token; keep one line
        message = str(err).replace(token, "***").splitlines()[0][:300] if str(err) else type(err).__name__
        raise RunError(f"push to {repo_id} failed: {message}") from None
    return str(getattr(info, "commit_url", info))


def export_run(run: RunDir | Path, methods: list[str], push_to_hub: str | None = None, private: bool = False) -> dict:
    """Export a finished run folder: lora (already there), merged_16bit (merged now), optional Hub push."""
    from unsloth_sft.model import resolve_model_path

    run = RunDir.of(run)
    cfg = run.config()
    metrics = run.metrics()
    eval_metrics = (run.eval_metrics() or {}).get("metrics")
    out: dict[str, str] = {}
    for method in methods:
        if method == "lora":
            if not run.has_adapter:
                raise ModelError(f"{run}: no adapter/ in this run (full fine-tuning or unfinished); use merged_16bit")
            write_card(run.adapter, model_card(cfg, metrics, eval_metrics, "lora"), cfg)
            out["lora"] = str(run.adapter)
        elif method == "merged_16bit":
            if run.has_adapter:
                merge_adapter(resolve_model_path(cfg.model.name), run.adapter, run.merged, cfg.export.max_shard_size)
            elif not run.has_merged:
                raise ModelError(f"{run}: neither adapter/ nor merged/ here; train first")
            write_card(run.merged, model_card(cfg, metrics, eval_metrics, "merged"), cfg)
            out["merged_16bit"] = str(run.merged)
        elif method in ("merged_4bit_forced", "gguf"):
            unsloth_only(method, "transformers")  # a saved run has no live unsloth model: always explains
        else:
            raise ConfigError(f"--method {method}: not one of lora, merged_16bit, merged_4bit_forced, gguf")
    if push_to_hub:
        folder = Path(out.get("merged_16bit") or out.get("lora") or run.adapter)
        out["hub"] = push_folder(folder, push_to_hub, private)
    return out
