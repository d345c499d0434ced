"""The LoRA adapter as GGUF, for llama.cpp's `--lora` and Ollama's `ADAPTER`: llama.cpp's own
`convert_lora_to_gguf.py` on adapter/ (`--base`: the base model's folder, of which it reads the config), written
beside the base GGUF the adapter applies to, with a Modelfile naming both.

The base GGUF is the file the base model was converted from when there is one (a packaged or `.gguf` model: the
adapter was trained on exactly its de-quantized weights), named where it lies; else the base converted once with
`convert_hf_to_gguf.py` into the same folder, carrying training's tokenizer and chat template.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from unsloth_sft.core.errors import ConfigError, RunError
from unsloth_sft.core.files import write_json
from unsloth_sft.core.progress import duration, size
from unsloth_sft.export.gguf import CONVERTER_TYPES, Relay, _last_error, attention_scale_problem, convert, run_relayed
from unsloth_sft.export.gguf import stage as stage_model
from unsloth_sft.export.modelfile import modelfile
from unsloth_sft.runs.folder import LORA_GGUF

FOLDER = LORA_GGUF  # in the run folder, beside gguf/ (the merged model's files)
LORA_TYPES = ("f32", "f16", "bf16", "q8_0")  # what convert_lora_to_gguf.py writes (no k-quants for adapters)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def adapter_types(quants: list[str]) -> list[str]:
    """The adapter files to write: export.gguf_quant's types the LoRA converter takes, else f16."""
    return [q for q in dict.fromkeys(quants) if q in LORA_TYPES] or ["f16"]


def adapter_config(adapter: Path) -> dict:
    return json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))


def check_adapter(adapter: Path) -> None:
    """Before any work: what llama.cpp's LoRA format cannot hold (DoRA's magnitudes, per-module ranks or alphas)."""
    config = adapter_config(adapter)
    if config.get("use_dora"):
        raise ConfigError(
            "export lora_gguf: llama.cpp's LoRA GGUF has no DoRA magnitudes; set lora.use_dora: false "
            "or export gguf (the merged model)"
        )
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ConfigError(
            "export lora_gguf: llama.cpp's LoRA GGUF has one alpha for every module, this adapter has "
            "per-module ranks or alphas; export gguf (the merged model) instead"
        )
    saved = [m for m in config.get("modules_to_save") or [] if m]
    if saved:
        raise ConfigError(
            f"export lora_gguf: the adapter saves whole modules ({', '.join(saved)}), which llama.cpp's "
            "LoRA GGUF cannot hold; export gguf (the merged model) instead"
        )


def stage_adapter(adapter: Path, out: Path) -> Path:
    """adapter/ as the converter reads it. llama.cpp scales by alpha / r; rank-stabilised LoRA (use_rslora) scales by
    alpha / sqrt(r): its alpha is written as alpha * sqrt(r), the same scale."""
    out.mkdir(parents=True)
    config = adapter_config(adapter)
    for path in Path(adapter).iterdir():
        if path.is_file() and path.name != "adapter_config.json":
            (out / path.name).symlink_to(path.resolve())
    if config.get("use_rslora"):
        config["lora_alpha"] = float(config["lora_alpha"]) * float(config["r"]) ** 0.5
        config["use_rslora"] = False
    write_json(out / "adapter_config.json", config)
    return out


def convert_lora(root: Path, adapter: Path, base: Path, out_file: Path, outtype: str) -> Path:
    """llama.cpp's convert_lora_to_gguf.py, as a subprocess of this Python, its progress relayed."""
    script = root / "convert_lora_to_gguf.py"
    if not script.is_file():
        raise RunError(f"llama.cpp's LoRA converter is missing: no {script}; unpack llama.cpp again (scripts/setup.sh)")
    cmd = [sys.executable, str(script), str(adapter), "--base", str(base), "--outfile", str(out_file)]
    env = {k: v for k, v in os.environ.items() if k not in ("NO_LOCAL_GGUF", "TQDM_DISABLE")}
    code, text = run_relayed([*cmd, "--outtype", outtype], Relay(f"lora gguf {outtype}"), env)
    if code != 0 or not out_file.is_file():
        raise RunError(f"llama.cpp's LoRA converter failed ({outtype}): {_last_error(text)}")
    return out_file


def source_gguf(base_path: str) -> Path | None:
    """The one GGUF file the base was converted from (a packaged or .gguf model), or None (a Hugging Face folder,
    or a model packaged in several parts: llama.cpp loads one file)."""
    from unsloth_sft.models.gguf import model_source

    source = model_source(base_path)
    parts = (source or {}).get("gguf") or []
    return Path(parts[0]) if len(parts) == 1 and Path(parts[0]).is_file() else None


def base_view(base_path: str, adapter: Path, out: Path) -> Path:
    """The base's weights and config with training's tokenizer files (adapter/ has them: model.chat_template and
    all), so the base GGUF renders prompts as training did."""
    out.mkdir(parents=True)
    for path in Path(base_path).iterdir():
        if path.is_file() and path.name not in TOKENIZER_FILES and path.name != "README.md":
            (out / path.name).symlink_to(path.resolve())
    for name in TOKENIZER_FILES:
        if (Path(adapter) / name).is_file():
            (out / name).symlink_to((Path(adapter) / name).resolve())
    return out


def export_lora_gguf(adapter: Path, out_dir: Path, cfg, tokenizer, template: str, base_path: str, root: Path) -> dict:
    """{"adapters": {file: figures}, "base": {...}}: each adapter type into out_dir (atomically) with a Modelfile
    (FROM the base GGUF, ADAPTER the adapter), the base GGUF exported there unless the base came from one."""
    import contextlib

    from transformers import AutoConfig

    from unsloth_sft.core.files import atomic_dir, scratch_dir

    check_adapter(adapter)
    types = adapter_types(cfg.export.gguf_quant)
    named = source_gguf(base_path)
    if named is None:
        problem = attention_scale_problem(AutoConfig.from_pretrained(base_path))
        if problem:
            raise RunError(f"export lora_gguf: the base GGUF: {problem}")
    info: dict = {"adapters": {}}
    with scratch_dir(out_dir) as work, atomic_dir(out_dir) as tmp, contextlib.ExitStack():
        staged = stage_adapter(adapter, work / "adapter")
        for outtype in types:
            out_file = tmp / f"{cfg.run_name}-lora-{outtype}.gguf"
            started = time.perf_counter()
            print(f"gguf: converting adapter/ to {out_file.name} (llama.cpp's convert_lora_to_gguf.py)", flush=True)
            convert_lora(root, staged, Path(base_path), out_file, outtype)
            took = duration(time.perf_counter() - started)
            print(f"gguf: {out_file.name}, {size(out_file.stat().st_size)}, in {took}", flush=True)
            info["adapters"][out_file.name] = {"type": outtype, "bytes": out_file.stat().st_size}
        if named is not None:
            base_ref = str(named)
            info["base"] = {"file": base_ref, "made": False, "bytes": named.stat().st_size}
            print(f"gguf: the adapter applies to {named.name}, the GGUF the base model came from", flush=True)
        else:
            base_type = next((t for t in types if t in CONVERTER_TYPES), "f16")
            base_file = tmp / f"{Path(base_path).name}-{base_type}.gguf"
            print(f"gguf: converting the base model to {base_file.name} (the adapter's FROM)", flush=True)
            view = base_view(base_path, adapter, work / "base-view")
            convert(root, stage_model(view, tokenizer, base_path, work / "base"), base_file, base_type)
            base_ref = base_file.name
            info["base"] = {"file": base_file.name, "made": True, "bytes": base_file.stat().st_size}
        for name in info["adapters"]:
            text = modelfile(name, tokenizer, template, cfg.eval, base=base_ref)
            (tmp / Path(name).with_suffix(".Modelfile").name).write_text(text, encoding="utf-8")
    return info


def runtime_check(base_gguf: Path, adapter_gguf: Path, reference, tokenizer, prompts: list[str]) -> dict:
    """The pair in llama.cpp itself (`llama-server -m BASE --lora ADAPTER`, greedy) against base + adapter in
    transformers (`reference`): how many greedy replies are equal token for token to the same stop, and where the
    first ones differ; `without_lora_equal`: how many the base GGUF alone gives too (fewer: the adapter is applied).
    Skipped, with the reason, when llama-server is not built."""
    from unsloth_sft.export.check import CHECK_MAX_NEW_TOKENS, greedy, stops, until_stop
    from unsloth_sft.export.llama_cpp import HOW_TO_BUILD, LlamaServer, server_binary

    binary = server_binary()
    if binary is None:
        return {"skipped": f"llama.cpp's llama-server is not built; {HOW_TO_BUILD}"}
    stop, same, differ = stops(tokenizer), 0, []
    ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    refs = [until_stop(greedy(reference, tokenizer, i, CHECK_MAX_NEW_TOKENS), stop) for i in ids]
    decode = lambda t: tokenizer.decode([x for x in t if x >= 0])  # noqa: E731
    try:
        with LlamaServer(base_gguf, binary, ["--lora", str(adapter_gguf)]) as server:
            for i, (prompt_ids, ref) in enumerate(zip(ids, refs)):
                got = until_stop(server.complete(prompt_ids, CHECK_MAX_NEW_TOKENS)["tokens"], stop)
                same += ref == got
                if ref != got:
                    at = next((k for k, (a, b) in enumerate(zip(ref, got)) if a != b), min(len(ref), len(got)))
                    differ.append({"prompt": i, "at_token": at, "adapter": decode(ref), "llama_cpp": decode(got)})
        with LlamaServer(base_gguf, binary) as server:
            alone = [until_stop(server.complete(i, CHECK_MAX_NEW_TOKENS)["tokens"], stop) for i in ids]
    except RunError as err:  # reported in export_check.json and printed; the files stand
        return {"error": str(err)}
    without = sum(a == r for a, r in zip(alone, refs))
    return {"greedy_equal": same, "prompts": len(prompts), "without_lora_equal": without, "differences": differ}


def runtime_line(name: str, figures: dict) -> str:
    """What the export prints about the adapter in llama.cpp: a mismatch said plainly."""
    if "skipped" in figures or "error" in figures:
        return f"gguf: {name} in llama.cpp (--lora): not checked ({figures.get('skipped') or figures.get('error')})"
    if figures["greedy_equal"] == figures["prompts"]:
        return (
            f"gguf: {name} in llama.cpp (--lora): same greedy replies as adapter/ ({figures['prompts']} prompts; the "
            f"base alone gives {figures['without_lora_equal']} of them)"
        )
    first = figures["differences"][0]
    return (
        f"gguf: {name} in llama.cpp (--lora): MISMATCH: {figures['prompts'] - figures['greedy_equal']} of "
        f"{figures['prompts']} greedy replies differ from adapter/'s (first at token {first['at_token']} of prompt "
        f"{first['prompt']})"
    )
