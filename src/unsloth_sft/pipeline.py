"""The training job as a few steps the CLI and the notebooks share: start, train, finish."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unsloth_sft import tasks
from unsloth_sft.chat_templates import template_text
from unsloth_sft.config import RunConfig, eval_strategy, save_config
from unsloth_sft.data import PreparedData, check_trainable, has_test, load_examples, prepare
from unsloth_sft.distributed import (
    check_launch,
    from_main,
    init_distributed,
    is_main_process,
    main_first,
    save_sharded,
    world_size,
)
from unsloth_sft.errors import DataError
from unsloth_sft.export import (
    export_unsloth,
    merge_adapter,
    model_card,
    push_folder,
    save_adapter,
    save_full,
    unsloth_only,
    write_card,
)
from unsloth_sft.gguf_models import model_source
from unsloth_sft.model import LoadedModel, format_groups, load_model, params_by_group, resolve_model_path
from unsloth_sft.quiet import import_backend, no_progress_bars
from unsloth_sft.runs import RunDir, write_json
from unsloth_sft.tracking import trackers
from unsloth_sft.train import build_trainer, environment, loss_history, plot_loss, train


@dataclass
class Run:
    cfg: RunConfig
    folder: RunDir
    resume_from: Path | None
    loaded: LoadedModel | None = None
    data: PreparedData | None = None
    trainer: Any = None
    metrics: dict | None = None
    set_aside: Path | None = None  # an overwritten run, kept until this one has finished

    @property
    def run_dir(self) -> Path:
        return self.folder.path


def start(cfg: RunConfig) -> Run:
    """Check the run folder (refusing a finished run or a mismatched resume), load data and model, save the config.

    With several processes every rank calls this; rank 0 alone writes, and the others take its resume point.
    """
    cfg = check_launch(cfg)  # before anything is written or joined
    folder = RunDir(cfg.run_dir)
    # Everything that can be wrong with the input fails here, before a byte is written: the run folder
    # (finished? resumable with this config? writable?), the data (read and shaped without a tokenizer, so
    # before a slow model load), then the model and the tokenized data.
    if is_main_process():
        folder.check(cfg)
    examples = load_examples(cfg)
    cfg = cfg.with_task(examples.task)  # resolved once: config.yaml, eval and infer all say which task this is
    check_eval_data(cfg, examples)
    backend = import_backend(cfg.model.backend)  # unsloth before anything imports transformers (trackers, model path)
    if cfg.model.chat_template:
        template_text(cfg.model.chat_template, backend)  # a bad name or file fails before the model loads
    trackers(cfg)  # an unknown or uninstalled train.report_to fails here, not after the model loaded
    init_distributed()
    with main_first():  # the tiny model is built once, by rank 0; the others then read it
        resolve_model_path(cfg.model.name)
    with no_progress_bars():  # a bad target_modules or max_seq_length stays the only line on stderr
        loaded = load_model(cfg)
        data = prepare(cfg, loaded.tokenizer, examples)
    check_trainable(data, cfg)
    if eval_strategy(cfg.train) != "no" and (data.test is None or len(data.test) == 0):
        raise DataError(no_test_split(cfg))
    resume_from = aside = None
    if is_main_process():
        resume_from, aside = folder.prepare(cfg)
        source = model_source(loaded.path)  # a GGUF-converted base: which file, by hash, under which licence
        header = (
            f"model.name {cfg.model.name}: GGUF sha256 {source['sha256']}, licence {source['license']}"
            if source
            else ""
        )
        save_config(cfg, folder / ".config.yaml.tmp", header)
        (folder / ".config.yaml.tmp").replace(folder.config_file)
        write_json(folder.environment_file, {**environment(), "model_source": source})
    resume_from = from_main(resume_from)  # every rank resumes from the same step (or none does)
    run = Run(cfg, folder, resume_from, loaded, data, set_aside=aside)
    if is_main_process():
        lm = run.loaded
        print(
            f"{lm.backend} backend | {lm.path} | trainable {lm.trainable_params:,} of {lm.total_params:,} parameters "
            f"({100 * lm.trainable_params / max(lm.total_params, 1):.2f} %)"
        )
        print(f"data: {data_line(run.data, cfg)}")
        print(format_groups(params_by_group(lm.model)))
    return run


def no_test_split(cfg: RunConfig) -> str:
    return (
        f"{cfg.data.source}: evaluation during training (train.eval_steps / eval_strategy) needs a test split, and "
        "it is empty; set data.test_size (e.g. 0.1) or data.test_split"
    )


def check_eval_data(cfg: RunConfig, examples) -> None:
    """Evaluation during training has test examples to score, and train.eval_metric suits the task."""
    from unsloth_sft.evaluate import check_eval_metric

    if eval_strategy(cfg.train) == "no":
        return
    if not has_test(examples, cfg):
        raise DataError(no_test_split(cfg))
    check_eval_metric(cfg, examples.task)


def data_line(d: PreparedData, cfg: RunConfig) -> str:
    """One line on what training will see: task, template, examples (or raw-text blocks) per split."""
    test = len(d.test) if d.test is not None else 0
    if tasks.get(d.task).shape == "blocks":
        return f"{d.task} task, {len(d.train)} train / {test} test blocks of {cfg.data.block_size} tokens"
    return (
        f"{d.task} task, {d.template} template, {len(d.train)} train / {test} test examples, {d.skipped} skipped "
        f"(empty answer), {d.truncated} truncated at {cfg.model.max_seq_length} tokens"
    )


def fit(run: Run) -> dict:
    """Train with TRL's SFTTrainer (resuming from the newest checkpoint when there is one)."""
    cfg, d, tok = run.cfg, run.data, run.loaded.tokenizer
    evaluating = eval_strategy(cfg.train) != "no"
    callbacks = []
    if cfg.train.eval_metric:
        from unsloth_sft.evaluate import generation_metric_callback

        callbacks.append(
            generation_metric_callback(cfg, tok, d.test_conversations, d.template, d.task, run.loaded.backend)
        )
    run.trainer = build_trainer(
        cfg,
        run.loaded.model,
        tok,
        d.train,
        eval_dataset=d.test if evaluating else None,
        callbacks=callbacks,
        backend=run.loaded.backend,
    )
    if is_main_process():
        t, n = run.cfg.train, world_size()
        batch, accum = t.per_device_train_batch_size, t.gradient_accumulation_steps
        print(
            f"{n} process{'es' if n > 1 else ''} x {batch} per device x {accum} accumulation "
            f"= effective batch {batch * accum * n}"
        )
    run.metrics = train(run.cfg, run.trainer, run.resume_from)
    lm, d = run.loaded, run.data
    run.metrics.update(
        backend=lm.backend,
        base_model=lm.path,
        trainable_params=lm.trainable_params,
        params_by_group=params_by_group(lm.model),
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
    cfg, lm, folder = run.cfg, run.loaded, run.folder
    target = folder.merged if cfg.finetune == "full" else folder.adapter
    sharded = save_sharded(run.trainer, target, lm.tokenizer)  # FSDP / ZeRO-3 only; a collective, so before the return
    if not is_main_process():
        return run.metrics
    history, evals = loss_history(run.trainer), run.metrics.get("eval_history") or []
    write_json(folder.loss_history, {"history": history, "eval": evals})
    if history:
        best = (run.metrics.get("best") or {}).get("step")
        title = f"{cfg.run_name}: {'training and eval' if evals else 'training'} loss"
        plot_loss(history, folder.loss_plot, title=title, evals=evals, best=best)
    methods = cfg.export.save_methods
    exported = {}
    if cfg.finetune != "full":
        path = sharded or save_adapter(lm.model, lm.tokenizer, folder.adapter)
        write_card(path, model_card(cfg, run.metrics, None, "lora"), cfg)
        exported["lora"] = str(path)
        if "merged_16bit" in methods:
            path = merge_adapter(lm.path, path, folder.merged, cfg.export.max_shard_size)
            write_card(path, model_card(cfg, run.metrics, None, "merged"), cfg)
            exported["merged_16bit"] = str(path)
    else:
        path = sharded or save_full(lm.model, lm.tokenizer, folder.merged, cfg.export.max_shard_size)
        write_card(path, model_card(cfg, run.metrics, None, "merged"), cfg)
        exported["merged_16bit"] = str(path)
    for method in ("merged_4bit_forced", "gguf"):
        if method in methods:
            unsloth_only(method, lm.backend)
            exported[method] = str(
                export_unsloth(lm.model, lm.tokenizer, method, folder / method, cfg.export.quantization_method)
            )
    if cfg.export.push_to_hub:
        pushed = Path(exported.get("merged_16bit") or exported["lora"])
        exported["hub"] = push_folder(pushed, cfg.export.push_to_hub, cfg.export.private)
    run.metrics["exported"] = exported
    write_json(folder.metrics_file, run.metrics)
    RunDir.drop(run.set_aside)  # the new run is complete: the one it replaced can go
    return run.metrics


def release(run: Run) -> None:
    """Free the training model and trainer (evaluation then loads the saved adapter, not a second copy)."""
    import gc

    run.trainer = None
    if run.loaded is not None:
        run.loaded.model = None
    gc.collect()


def run_training(cfg: RunConfig) -> dict:
    """The whole training job: start, fit, finish. Returns metrics.json's content."""
    run = start(cfg)
    fit(run)
    return finish(run)


__all__ = ["Run", "data_line", "finish", "fit", "release", "run_training", "start"]
