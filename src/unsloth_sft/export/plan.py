"""The one export dispatcher: what to save, in which order, from the live training model or a saved run folder.

Training's last stage (`pipeline.finish`) and `unsloth-sft export RUN` both call `export`. The order is fixed:
the trained weights (adapter/, or merged/ for a full fine-tune), merged/ from the adapter when a method needs it,
unsloth's 4-bit save, the model cards, the export check (merged/ against the adapter, then each GGUF written and
checked against merged/), the adapter as GGUF (lora-gguf/, checked in llama.cpp with --lora), and last the Hub push. Everything that can refuse an export does so before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unsloth_sft.config.run import RunConfig
from unsloth_sft.config.types import SAVE_METHODS
from unsloth_sft.core.errors import ConfigError, ModelError, RunError
from unsloth_sft.core.files import remove_leftovers, write_json
from unsloth_sft.core.quiet import warn
from unsloth_sft.evaluation.report import check_table
from unsloth_sft.evaluation.run_report import write_run_report
from unsloth_sft.export import check as C
from unsloth_sft.export.card import gguf_card, lora_gguf_card, model_card, write_card
from unsloth_sft.export.gguf import check_quants, export_gguf, llama_cpp_dir
from unsloth_sft.export.hub import push_folder, push_plan
from unsloth_sft.export.weights import (
    FORCED_4BIT_WHY,
    export_unsloth,
    merge_adapter,
    save_adapter,
    save_full,
    unsloth_only,
)
from unsloth_sft.runs.folder import MERGED_4BIT, RunDir
from unsloth_sft.runs.lock import locked


@dataclass
class Live:
    """The model training has just finished: only training can save from it (and only it can do merged_4bit_forced)."""

    model: Any
    tokenizer: Any
    backend: str  # "unsloth" or "transformers"
    base_path: str  # where its base weights came from (a folder or Hub id), for the merge
    sharded: Path | None = None  # FSDP / ZeRO-3: the weights Trainer.save_model gathered, already in place


def check_gguf_tools(cfg: RunConfig) -> None:
    """The converter, and llama-quantize when a quantization needs it: one line each on how to get them."""
    check_quants(cfg.export.gguf_quant, llama_cpp_dir())


def check_methods(methods: list[str], cfg: RunConfig, run: RunDir | None = None, backend: str | None = None) -> None:
    """Refuse what this export cannot do, before any work: an unknown method, unsloth's 4-bit save outside a live
    unsloth model on a GPU (`backend` None: a saved run), an adapter a run does not have, missing GGUF tools."""
    for method in methods:
        if method not in SAVE_METHODS:
            raise ConfigError(f"--method {method}: not one of {', '.join(SAVE_METHODS)}")
    if "merged_4bit_forced" in methods:
        if backend is None:
            raise RunError(
                f"{FORCED_4BIT_WHY}, and {run} is a saved run; set export.save_methods: [lora, merged_4bit_forced] for "
                "a training run on a GPU, or use merged_16bit, or gguf with export.gguf_quant: [q4_k_m] for a 4-bit file"
            )
        unsloth_only("merged_4bit_forced", backend)
    if run is not None and "lora" in methods and not run.has_adapter:
        raise ModelError(f"{run}: no adapter/ in this run (full fine-tuning or unfinished); use merged_16bit")
    if run is not None and "merged_16bit" in methods and run.kind is None:
        raise ModelError(f"{run}: neither adapter/ nor merged/ here; train first")
    if "gguf" in methods:
        check_gguf_tools(cfg)
    if "lora_gguf" in methods:
        check_lora_gguf(cfg, run)


def check_lora_gguf(cfg: RunConfig, run: RunDir | None) -> None:
    """lora_gguf needs an adapter (a full fine-tune has none), llama.cpp's converter, and an adapter llama.cpp's
    LoRA GGUF can hold."""
    from unsloth_sft.export.lora_gguf import check_adapter

    if cfg.finetune == "full" or (run is not None and not run.has_adapter):
        where = "finetune is full" if cfg.finetune == "full" else f"{run} has no adapter/"
        raise ModelError(f"--method lora_gguf converts a LoRA adapter, but {where}; use gguf (the whole model)")
    llama_cpp_dir()
    if cfg.lora.use_dora:
        raise ConfigError("export lora_gguf: llama.cpp's LoRA GGUF has no DoRA magnitudes; use gguf (merged model)")
    if run is not None:
        check_adapter(run.adapter)


def export(
    run: RunDir | str | Path,
    cfg: RunConfig,
    methods: list[str],
    live: Live | None = None,
    metrics: dict | None = None,
    eval_metrics: dict | None = None,
    push_to_hub: str | None = None,
    private: bool = True,
) -> dict[str, str]:
    """Save what `methods` ask for into the run folder, check it, push it; returns {method: folder} (and "hub").

    With `live` (training), the trained weights are always saved: the adapter, or merged/ for a full fine-tune.
    Without it (a saved run), what is there is used, and merged/ is made from adapter/ when asked for.
    """
    from unsloth_sft.models.sources import resolve_model_path

    run = RunDir.of(run)
    check_methods(methods, cfg, None if live else run, live.backend if live else None)
    out: dict[str, str] = {}
    if live is not None and cfg.finetune == "full":
        print("export: the fully fine-tuned model -> merged/", flush=True)
        path = live.sharded or save_full(live.model, live.tokenizer, run.merged, cfg.export.max_shard_size)
        out["merged_16bit"] = str(path)
    elif live is not None:
        print("export: the LoRA adapter -> adapter/", flush=True)
        out["lora"] = str(live.sharded or save_adapter(live.model, live.tokenizer, run.adapter))
    elif "lora" in methods:
        out["lora"] = str(run.adapter)
    # merged/ from the adapter: when asked, or for llama.cpp's converter (again after training: a fresh adapter)
    remerge = live is not None or not run.has_merged
    if run.has_adapter and ("merged_16bit" in methods or ("gguf" in methods and remerge)):
        base = live.base_path if live is not None else resolve_model_path(cfg.model.name)
        print("export: base + adapter merged in 16/32-bit -> merged/", flush=True)
        out["merged_16bit"] = str(merge_adapter(base, run.adapter, run.merged, cfg.export.max_shard_size))
    elif "merged_16bit" in methods and run.has_merged:
        out["merged_16bit"] = str(run.merged)
    if "merged_4bit_forced" in methods:  # unsloth's saver, from the live model (check_methods made sure)
        out["merged_4bit_forced"] = str(
            export_unsloth(live.model, live.tokenizer, "merged_4bit_forced", run / MERGED_4BIT)
        )
    if "lora" in out:
        write_card(run.adapter, model_card(cfg, metrics, eval_metrics, "lora"), cfg)
    if "merged_16bit" in out:
        write_card(run.merged, model_card(cfg, metrics, eval_metrics, "merged"), cfg)
    out.update(verify(run, cfg, methods, metrics, eval_metrics))
    if "lora_gguf" in methods:
        out["lora_gguf"] = str(export_lora(run, cfg))
    if push_to_hub:
        pushes = push_plan(methods, out, push_to_hub)
        if not pushes:
            raise RunError(f"nothing to push to {push_to_hub}: {', '.join(methods)} made no folder in {run}")
        for method, folder, repo, where in pushes:
            print(f"export: {Path(folder).name}/ -> the Hub, {repo}{f' ({where}/)' if where else ''}", flush=True)
            out[f"hub_{method}"] = push_folder(Path(folder), repo, private, path_in_repo=where)  # the commit URL
        out["hub"] = out[f"hub_{pushes[0][0]}"]  # the first push's commit: what `hub` always named
    return out


def verify(run: RunDir, cfg: RunConfig, methods: list[str], metrics=None, eval_metrics=None) -> dict[str, str]:
    """export_check.json: merged/ against the adapter (the export fails beyond export.check_min_agreement), then
    each GGUF written (gguf/, with a Modelfile and a card) and checked against merged/. Returns {"gguf": folder}."""
    from transformers import AutoTokenizer

    from unsloth_sft.models.sources import resolve_model_path

    if not ({"merged_16bit", "gguf"} & set(methods)) or not run.has_merged:
        return {}
    tokenizer = AutoTokenizer.from_pretrained(run.merged)
    prompts, template = C.eval_prompts(cfg, tokenizer, cfg.export.check_prompts)
    print(f"export: checking merged/ against the adapter on {len(prompts)} eval prompts", flush=True)
    check: dict = {"prompts": len(prompts), "max_new_tokens": C.CHECK_MAX_NEW_TOKENS, "merged_vs_adapter": None}
    problem = None
    base_path = resolve_model_path(cfg.model.name)
    if run.has_adapter:
        check["merged_vs_adapter"], problem = C.check_merged(
            base_path, run.adapter, run.merged, tokenizer, prompts, cfg.export.check_min_agreement
        )
    else:
        check["note"] = "full fine-tune: merged/ is the trained model itself, there is no adapter to compare"
    write_json(run.export_check_file, check)
    C.fail_if(problem)
    out = {}
    if "gguf" in methods:
        merged_model = C.load_float32(run.merged)
        check["gguf"], problem = export_gguf(
            run.merged, run.gguf_dir, cfg, tokenizer, template, prompts, merged_model, base_path
        )
        write_json(run.export_check_file, check)
        C.fail_if(problem)
        write_card(run.gguf_dir, gguf_card(cfg, check, sorted(check["gguf"])), cfg)
        out["gguf"] = str(run.gguf_dir)
    card = model_card(cfg, metrics, eval_metrics, "merged")
    write_card(run.merged, card + "\n## Export check\n\n" + check_table(check) + "\n", cfg)
    return out


def export_lora(run: RunDir, cfg: RunConfig) -> Path:
    """lora-gguf/: the adapter as GGUF beside its base GGUF, with Modelfiles and a card; checked in llama.cpp with
    --lora against base + adapter (export_check.json's "lora_gguf"). Returns the folder."""
    from transformers import AutoTokenizer

    from unsloth_sft.core.files import read_json
    from unsloth_sft.export.lora_gguf import FOLDER, export_lora_gguf, runtime_check, runtime_line
    from unsloth_sft.models.sources import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(run.adapter)
    prompts, template = C.eval_prompts(cfg, tokenizer, cfg.export.check_prompts)
    base_path = resolve_model_path(cfg.model.name)
    out_dir = run / FOLDER
    info = export_lora_gguf(run.adapter, out_dir, cfg, tokenizer, template, base_path, llama_cpp_dir())
    base_file = Path(info["base"]["file"]) if not info["base"]["made"] else out_dir / info["base"]["file"]
    reference = C.load_float32(base_path, run.adapter)
    for name, figures in info["adapters"].items():
        figures["llama_cpp"] = runtime_check(base_file, out_dir / name, reference, tokenizer, prompts)
        print(runtime_line(name, figures["llama_cpp"]), flush=True)
    check = read_json(run.export_check_file) or {}
    check["lora_gguf"] = info
    write_json(run.export_check_file, check)
    write_card(out_dir, lora_gguf_card(cfg, info), cfg)
    return out_dir


def export_run(
    run: RunDir | str | Path,
    methods: list[str],
    push_to_hub: str | None = None,
    private: bool = False,
    quant: list[str] | None = None,
) -> dict[str, str]:
    """`unsloth-sft export RUN`: export a finished run folder with its own config (`quant` overriding
    export.gguf_quant), its metrics and its evaluation in the cards; {what: folder}, the run's report.html last."""
    run = RunDir.of(run)
    cfg = run.config([f"export.gguf_quant=[{', '.join(quant)}]"] if quant else None)
    with locked(run.path):  # one writer per run folder: not while it trains or is evaluated
        run.check_writable()
        if not run.is_finished:
            warn(f"{run} is not finished (no metrics.json): exporting the weights it has")
        for note in remove_leftovers(run.path):
            print(note)
        eval_metrics = (run.eval_metrics() or {}).get("metrics")
        out = export(run, cfg, methods, None, run.metrics(), eval_metrics, push_to_hub, private)
        out["report"] = str(write_run_report(run))  # the report lists the exports now; the JSON line names it
        return out
