"""The training job as a few steps the CLI and the notebooks share: start, train, finish."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unsloth_sft.config import RunConfig, save_config
from unsloth_sft.data import PreparedData, load_examples, prepare
from unsloth_sft.export import (
    ADAPTER_DIR,
    MERGED_DIR,
    export_unsloth,
    merge_adapter,
    model_card,
    push_folder,
    save_adapter,
    save_full,
    unsloth_only,
    write_card,
)
from unsloth_sft.model import LoadedModel, load_model, resolve_model_path
from unsloth_sft.runs import check_run_dir, prepare_run_dir, write_json
from unsloth_sft.distributed import (
    check_launch,
    from_main,
    init_distributed,
    is_main_process,
    main_first,
    save_sharded,
    world_size,
)
from unsloth_sft.tracking import trackers
from unsloth_sft.train import build_trainer, environment, loss_history, plot_loss, train


@dataclass
class Run:
    cfg: RunConfig
    run_dir: Path
    resume_from: Path | None
    loaded: LoadedModel | None = None
    data: PreparedData | None = None
    trainer: Any = None
    metrics: dict | None = None


def start(cfg: RunConfig) -> Run:
    """Check the run folder (refusing a finished run), save the resolved config, load model and data.

    With several processes every rank calls this; rank 0 alone writes, and the others take its resume point.
    """
    cfg = check_launch(cfg)  # before anything is written or joined
    trackers(cfg)  # an unknown or uninstalled train.report_to fails here, not after the model loaded
    init_distributed()
    run_dir = cfg.run_dir
    # Everything that can be wrong with the input fails here, before a byte is written: the run folder
    # (finished? writable?), the data (read and shaped without a tokenizer, so before a slow model load),
    # then the model and the tokenized data.
    if is_main_process():
        check_run_dir(run_dir, cfg.overwrite)
    examples = load_examples(cfg)
    with main_first():  # the tiny model is built once, by rank 0; the others then read it
        resolve_model_path(cfg.model.name)
    loaded = load_model(cfg)
    data = prepare(cfg, loaded.tokenizer, examples)
    resume_from = None
    if is_main_process():
        resume_from = prepare_run_dir(run_dir, cfg.overwrite, cfg.train.resume)
        save_config(cfg, run_dir / ".config.yaml.tmp")
        (run_dir / ".config.yaml.tmp").replace(run_dir / "config.yaml")
        write_json(run_dir / "environment.json", environment())
    resume_from = from_main(resume_from)  # every rank resumes from the same step (or none does)
    run = Run(cfg, run_dir, resume_from, loaded, data)
    if is_main_process():
        lm = run.loaded
        print(f"{lm.backend} backend | {lm.path} | trainable {lm.trainable_params:,} of {lm.total_params:,} parameters "
              f"({100 * lm.trainable_params / max(lm.total_params, 1):.2f} %)")
        d = run.data
        print(f"data: {d.task} task, {d.template} template, {len(d.train)} train / {len(d.test) if d.test else 0} test"
              f" examples, {d.skipped} skipped (empty answer), {d.truncated} truncated at {cfg.model.max_seq_length} tokens")
    return run


def fit(run: Run) -> dict:
    """Train with TRL's SFTTrainer (resuming from the newest checkpoint when there is one)."""
    run.trainer = build_trainer(run.cfg, run.loaded.model, run.loaded.tokenizer, run.data.train, backend=run.loaded.backend)
    if is_main_process():
        t, n = run.cfg.train, world_size()
        batch, accum = t.per_device_train_batch_size, t.gradient_accumulation_steps
        print(f"{n} process{'es' if n > 1 else ''} x {batch} per device x {accum} accumulation "
              f"= effective batch {batch * accum * n}")
    run.metrics = train(run.cfg, run.trainer, run.resume_from)
    lm, d = run.loaded, run.data
    run.metrics.update(
        backend=lm.backend,
        base_model=lm.path,
        trainable_params=lm.trainable_params,
        total_params=lm.total_params,
        task=d.task,
        template=d.template,
        train_examples=len(d.train),
        skipped_examples=d.skipped,
        truncated_examples=d.truncated,
        resumed_from=str(run.resume_from) if run.resume_from else None,
    )
    return run.metrics


def finish(run: Run) -> dict:
    """Save adapter / merged weights / cards / loss curve, then metrics.json last (it marks the run finished).

    Rank 0 writes everything; the other ranks only join the weight gather of FSDP / ZeRO-3, then return.
    """
    cfg, lm = run.cfg, run.loaded
    target = run.run_dir / (MERGED_DIR if cfg.finetune == "full" else ADAPTER_DIR)
    sharded = save_sharded(run.trainer, target, lm.tokenizer)  # FSDP / ZeRO-3 only; a collective, so before the return
    if not is_main_process():
        return run.metrics
    history = loss_history(run.trainer)
    write_json(run.run_dir / "loss_history.json", {"history": history})
    if history:
        plot_loss(history, run.run_dir / "loss.png", title=f"{cfg.run_name}: training loss")
    base_name = cfg.model.name
    methods = cfg.export.save_methods
    exported = {}
    if cfg.finetune != "full":
        path = sharded or save_adapter(lm.model, lm.tokenizer, run.run_dir)
        write_card(path, model_card(cfg, base_name, run.metrics, None, "lora"))
        exported["lora"] = str(path)
        if "merged_16bit" in methods:
            path = merge_adapter(lm.path, path, run.run_dir / MERGED_DIR, cfg.export.max_shard_size)
            write_card(path, model_card(cfg, base_name, run.metrics, None, "merged"))
            exported["merged_16bit"] = str(path)
    else:
        path = sharded or save_full(lm.model, lm.tokenizer, run.run_dir / MERGED_DIR, cfg.export.max_shard_size)
        write_card(path, model_card(cfg, base_name, run.metrics, None, "merged"))
        exported["merged_16bit"] = str(path)
    for method in ("merged_4bit_forced", "gguf"):
        if method in methods:
            unsloth_only(method, lm.backend)
            exported[method] = str(export_unsloth(lm.model, lm.tokenizer, method, run.run_dir / method,
                                                  cfg.export.quantization_method))
    if cfg.export.push_to_hub:
        folder = Path(exported.get("merged_16bit") or exported["lora"])
        exported["hub"] = push_folder(folder, cfg.export.push_to_hub, cfg.export.private)
    run.metrics["exported"] = exported
    write_json(run.run_dir / "metrics.json", run.metrics)
    return run.metrics


def run_training(cfg: RunConfig) -> dict:
    """The whole training job: start, fit, finish. Returns metrics.json's content."""
    run = start(cfg)
    fit(run)
    return finish(run)


__all__ = ["ADAPTER_DIR", "MERGED_DIR", "Run", "finish", "fit", "run_training", "start"]
