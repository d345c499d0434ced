"""Export: LoRA adapter, merged 16-bit weights (reloaded un-quantised), unsloth's GPU formats, model card, Hub."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from unsloth_sft.config import RunConfig, source_names
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


def export_run(
    run: RunDir | Path,
    methods: list[str],
    push_to_hub: str | None = None,
    private: bool = False,
    quant: list[str] | None = None,
) -> dict:
    """Export a finished run folder: lora (already there), merged_16bit (merged now), gguf (llama.cpp's converter
    on merged/, `quant` overriding export.gguf_quant), each checked into export_check.json; optional Hub push."""
    from unsloth_sft.model import resolve_model_path

    run = RunDir.of(run)
    cfg = run.config([f"export.gguf_quant=[{', '.join(quant)}]"] if quant else None)
    metrics = run.metrics()
    eval_metrics = (run.eval_metrics() or {}).get("metrics")
    out: dict[str, str] = {}
    if "gguf" in methods:  # missing tools stop the export before any work
        check_gguf_tools(cfg)
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
        elif method == "gguf":
            if not run.has_merged:  # llama.cpp converts the merged folder
                merge_adapter(resolve_model_path(cfg.model.name), run.adapter, run.merged, cfg.export.max_shard_size)
        elif method == "merged_4bit_forced":
            raise RunError(
                f"{FORCED_4BIT_WHY}, and {run} is a saved run; set export.save_methods: [lora, merged_4bit_forced] for "
                "a training run on a GPU, or use merged_16bit, or gguf with export.gguf_quant: [q4_k_m] for a 4-bit file"
            )
        else:
            raise ConfigError(f"--method {method}: not one of lora, merged_16bit, merged_4bit_forced, gguf")
    out.update(verify_exports(run, cfg, methods, metrics, eval_metrics))
    if push_to_hub:
        folder = Path(out.get("merged_16bit") or out.get("lora") or run.adapter)
        out["hub"] = push_folder(folder, push_to_hub, private)
    return out


def check_gguf_tools(cfg: RunConfig) -> None:
    """The converter, and llama-quantize when a quantization needs it: one line each on how to get them."""
    from unsloth_sft.gguf_export import check_quants, llama_cpp_dir

    check_quants(cfg.export.gguf_quant, llama_cpp_dir())


def verify_exports(run: RunDir | Path, cfg: RunConfig, methods: list[str], metrics=None, eval_metrics=None) -> dict:
    """export_check.json: merged/ against the adapter (the export fails beyond export.check_min_agreement), then
    each GGUF against merged/ (written to gguf/ with a Modelfile and a card). Returns {method: folder}."""
    from transformers import AutoTokenizer

    from unsloth_sft import export_check as C
    from unsloth_sft.atomic import write_json
    from unsloth_sft.model import resolve_model_path

    run = RunDir.of(run)
    if not ({"merged_16bit", "gguf"} & set(methods)) or not run.has_merged:
        return {}
    tokenizer = AutoTokenizer.from_pretrained(run.merged)
    prompts, template = C.eval_prompts(cfg, tokenizer, cfg.export.check_prompts)
    check: dict = {"prompts": len(prompts), "max_new_tokens": C.CHECK_MAX_NEW_TOKENS, "merged_vs_adapter": None}
    problem = None
    base_path = resolve_model_path(cfg.model.name)
    if run.has_adapter:
        check["merged_vs_adapter"], problem = C.check_merged(
            base_path, run.adapter, run.merged, tokenizer, prompts, cfg.export.check_min_agreement
        )
    else:
        check["note"] = "full fine-tune: merged/ is the trained model itself, there is no adapter to compare"
    write_json(run / C.CHECK_FILE, check)
    C.fail_if(problem)
    out = {}
    if "gguf" in methods:
        from unsloth_sft.gguf_export import export_gguf

        merged_model = C.load_float32(run.merged)
        check["gguf"], problem = export_gguf(
            run.merged, run / "gguf", cfg, tokenizer, template, prompts, merged_model, base_path
        )
        write_json(run / C.CHECK_FILE, check)
        C.fail_if(problem)
        write_card(run / "gguf", gguf_card(cfg, check, sorted(check["gguf"])), cfg)
        out["gguf"] = str(run / "gguf")
    card = model_card(cfg, metrics, eval_metrics, "merged")
    write_card(run.merged, card + "\n## Export check\n\n" + C.check_table(check) + "\n", cfg)
    return out


def gguf_card(cfg: RunConfig, check: dict, files: list[str]) -> str:
    """gguf/README.md: what each file is, how it was checked, and how to run it with llama.cpp, Ollama, transformers."""
    from unsloth_sft.export_check import check_table

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
