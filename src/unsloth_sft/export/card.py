"""Model cards: README.md with Hub metadata, the training config and metrics, how to load or run the export."""

from __future__ import annotations

import shutil
from pathlib import Path

from unsloth_sft.config.data import source_names
from unsloth_sft.config.run import RunConfig


def model_card(cfg: RunConfig, metrics: dict | None, eval_metrics: dict | None, kind: str) -> str:
    """README.md with Hub YAML metadata, the training config, metrics, and how to load the model."""
    import yaml

    from unsloth_sft import tasks

    task = tasks.TASKS.get(cfg.data.task)  # the run's resolved task (config.yaml); None for auto (not yet resolved)
    source = base_source(cfg.model.name)
    base_model = (source or {}).get("base_model") or cfg.model.name
    meta = {
        "base_model": base_model,
        "datasets": [name for name in source_names(cfg.data) if not name.startswith("sample:")],
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
        f"on {' + '.join(f'`{name}`' for name in source_names(cfg.data))} ({cfg.data.task} task).",
        "## How to load\n\n" + load,
    ]
    started = started_from_line(cfg, metrics)
    if started:
        parts[1] += "\n\n" + started
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


def started_from_line(cfg: RunConfig, metrics: dict | None) -> str | None:
    """The "Started from adapter ..." line of a run that continued model.adapter (metrics.json's record), else None."""
    origin = (metrics or {}).get("started_from") or ({"adapter": cfg.model.adapter} if cfg.model.adapter else None)
    if not origin:
        return None
    line = f"Started from adapter `{origin['adapter']}`"
    if origin.get("revision"):
        line += f" (revision `{origin['revision'][:12]}`)"
    if origin.get("run_steps") is not None:
        loss = origin.get("run_last_loss")
        line += f", a run of {origin['run_steps']} steps" + (
            f" that ended at loss {loss:.4f}" if loss is not None else ""
        )
    return line + ", not from a fresh LoRA."


def base_source(name: str) -> dict | None:
    """Where a GGUF-converted base came from (file hash, licence, upstream id, terms file); None for other bases."""
    from unsloth_sft.models.catalogue import is_gguf_name
    from unsloth_sft.models.gguf import model_source
    from unsloth_sft.models.sources import resolve_model_path

    return model_source(resolve_model_path(name)) if is_gguf_name(name) else None


def write_card(folder: Path, text: str, cfg: RunConfig) -> None:
    """The model card, plus the base model's terms file when its licence says it must travel with derivatives."""
    from unsloth_sft.core.files import atomic_file, atomic_write_text

    atomic_write_text(Path(folder) / "README.md", text)
    source = base_source(cfg.model.name)
    if source and source["license_file"]:
        from unsloth_sft.models.sources import resolve_model_path

        with atomic_file(Path(folder) / source["license_file"]) as tmp:
            shutil.copyfile(Path(resolve_model_path(cfg.model.name)) / source["license_file"], tmp)


def gguf_card(cfg: RunConfig, check: dict, files: list[str]) -> str:
    """gguf/README.md: what each file is, how it was checked, and how to run it with llama.cpp, Ollama, transformers."""
    from unsloth_sft.evaluation.report import check_table

    first = files[0]
    name = cfg.run_name
    return (
        "\n\n".join(
            [
                f"# {name} (GGUF)\n\nllama.cpp's `convert_hf_to_gguf.py` on `merged/`; each file has an Ollama Modelfile "
                "beside it. The chat template, BOS/EOS and end-of-turn ids in each file are training's (checked).",
                "## Checked against the merged model\n\nOn the run's eval prompts (`export_check.json`), each GGUF loaded "
                "back with transformers' GGUF loader:\n\n" + check_table(check),
                "## Run it\n\nllama.cpp (uses the chat template stored in the file):\n\n"
                f"```bash\nllama-cli -m {first} -cnv\nllama-server -m {first} --port 8080\n```\n\n"
                "llama-cpp-python:\n\n```python\nfrom llama_cpp import Llama\n\n"
                f'llm = Llama(model_path="{first}")\n'
                'print(llm.create_chat_completion(messages=[{"role": "user", "content": "..."}]))\n```\n\n'
                f"Ollama:\n\n```bash\nollama create {name} -f {Path(first).with_suffix('.Modelfile').name}\n"
                f"ollama run {name}\n```\n\n"
                "transformers (de-quantizes to float32):\n\n```python\nfrom transformers import AutoModelForCausalLM\n\n"
                f'model = AutoModelForCausalLM.from_pretrained(".", gguf_file="{first}")\n```\n\n'
                "For Gemma-2 models prefer `../merged` with transformers: a GGUF has no field for `query_pre_attn_scalar`.",
            ]
        )
        + "\n"
    )


def lora_gguf_card(cfg: RunConfig, info: dict) -> str:
    """lora-gguf/README.md: the adapter GGUF, the base it applies to, and how to run the pair in llama.cpp and Ollama."""
    adapter = sorted(info["adapters"])[0]
    base = info["base"]["file"]
    where = (
        "converted from the base model's folder into this one"
        if info["base"]["made"]
        else "the GGUF the base model was converted from, where it lies on the machine that exported it (copy it "
        "beside the adapter, or edit the Modelfile's FROM, elsewhere)"
    )
    name = cfg.run_name
    return (
        f"# {name} (LoRA adapter, GGUF)\n\n"
        f"llama.cpp's `convert_lora_to_gguf.py` on `adapter/`: {', '.join(f'`{a}`' for a in sorted(info['adapters']))}. "
        f"An adapter GGUF runs on top of its base model's GGUF: `{base}`, {where}. Each adapter has an Ollama "
        "Modelfile beside it (`FROM` the base, `ADAPTER` the adapter, training's chat template).\n\n"
        "## Run it\n\n"
        f"```bash\nllama-cli -m {base} --lora {adapter} -cnv\nllama-server -m {base} --lora {adapter} --port 8080\n"
        f"ollama create {name} -f {Path(adapter).with_suffix('.Modelfile').name} && ollama run {name}\n```\n"
    )
