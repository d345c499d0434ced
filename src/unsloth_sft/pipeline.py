"""The training job as the stages the CLI and the training notebook share.

begin (checks, no model) -> load_base -> add_lora -> load_data (and the run folder) -> fit -> finish (the export
plan, then metrics.json). `start` is the first four; `run_training` is all of them. The notebook calls each stage
in its own cell, and evaluates the run after `release` (`evaluation.evaluate.evaluate_run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unsloth_sft import tasks
from unsloth_sft.config.data import source_names
from unsloth_sft.config.load import save_config
from unsloth_sft.config.run import RunConfig
from unsloth_sft.config.train import eval_strategy
from unsloth_sft.core.errors import DataError, SFTError
from unsloth_sft.core.files import write_json
from unsloth_sft.core.progress import stage
from unsloth_sft.core.quiet import no_progress_bars
from unsloth_sft.data.examples import PreparedData, check_trainable, has_test, load_examples, pick_examples, prepare
from unsloth_sft.data.mix import mix_lines
from unsloth_sft.data.rows import Examples
from unsloth_sft.evaluation.generate import generate
from unsloth_sft.evaluation.run_report import write_run_report
from unsloth_sft.export.hub import prepare_hub
from unsloth_sft.export.plan import Live, check_methods, export
from unsloth_sft.models import load, lora
from unsloth_sft.models.backends import dtype_line, import_backend
from unsloth_sft.models.chat_templates import template_text
from unsloth_sft.models.gguf import model_source
from unsloth_sft.models.load import LoadedModel
from unsloth_sft.models.params import format_groups, params_by_group
from unsloth_sft.models.sources import resolve_model_path
from unsloth_sft.runs.folder import RunDir
from unsloth_sft.runs.lock import RunLock
from unsloth_sft.training.distributed import (
    check_launch,
    from_main,
    init_distributed,
    is_main_process,
    main_first,
    save_sharded,
    world_size,
)
from unsloth_sft.training.loop import loss_history, train
from unsloth_sft.training.outputs import environment, plot_loss
from unsloth_sft.training.tracking import trackers
from unsloth_sft.training.trainer import build_trainer


@dataclass
class Run:
    cfg: RunConfig  # data.task resolved (begin)
    folder: RunDir
    examples: Examples | None = None  # the data read and shaped, not yet tokenized
    loaded: LoadedModel | None = None
    data: PreparedData | None = None
    resume_from: Path | None = None
    trainer: Any = None
    metrics: dict | None = None
    set_aside: Path | None = None  # an overwritten run, kept until this one has finished
    lock: RunLock | None = None  # the run folder's one-writer lock (rank 0), held from begin to finish
    recipe: str | dict | None = None  # the params file the config came from, papermill -f sections, or None

    @property
    def run_dir(self) -> Path:
        return self.folder.path


STAGES = 6  # begin, load_base, add_lora, load_data, fit, finish


def say(n: int, name: str) -> None:
    """The stage line (`[5/6] train`), once per job: by rank 0."""
    if is_main_process():
        stage(n, STAGES, name)


def begin(cfg: RunConfig, recipe: str | Path | dict | None = None) -> Run:
    """Stage 1, before any model loads: the launch, the run folder (finished? resumable with this config?
    writable?), the data (read and shaped without a tokenizer), the chat template and the trackers are checked;
    data.task is resolved. Nothing is written but the run's lock (beside the folder), or a checkpoint from the Hub:
    every input error stops here, in seconds, not after a model load, and a second writer of the folder stops here too.
    """
    cfg = check_launch(cfg)  # before anything is written or joined
    say(1, "check the config, the run folder and the data")
    cfg, adapter_line = lora.with_adapter(cfg)  # model.adapter: its LoRA settings, before the resume check below
    if adapter_line and is_main_process():
        print(adapter_line, flush=True)
    folder = RunDir(cfg.run_dir)
    if is_main_process():
        folder.check(cfg)  # a finished run, a config that cannot resume, a place that takes no folder
    lock = RunLock(folder.path).acquire() if is_main_process() else None
    try:
        run = _checked(cfg, folder, lock)
        run.recipe = recipe if isinstance(recipe, dict) or not recipe else str(recipe)
        if is_main_process():
            prepare_hub(run.cfg, folder)  # hub_strategy's token; resume: auto on a fresh runtime, from the Hub
        return run
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _checked(cfg: RunConfig, folder: RunDir, lock: RunLock | None) -> Run:
    examples = load_examples(cfg)
    cfg = cfg.with_task(examples.task)  # resolved once: config.yaml, eval and infer all say which task this is
    if examples.sources is not None:  # a mix: each source's task resolved too
        cfg = cfg.with_sources(examples.sources)
    check_eval_data(cfg, examples)
    backend = import_backend(cfg.model.backend)  # unsloth before anything imports transformers (trackers, model path)
    check_methods(cfg.export.save_methods, cfg, backend=backend)  # a missing GGUF converter: now, not after training
    if cfg.model.chat_template:
        template_text(cfg.model.chat_template, backend)  # a bad name or file fails before the model loads
    trackers(cfg)  # an unknown or uninstalled train.report_to fails here, not after the model loaded
    return Run(cfg, folder, examples, lock=lock)


def load_base(run: Run) -> str:
    """Stage 2: the base model and tokenizer (unsloth's FastLanguageModel, or transformers + bitsandbytes).

    With several processes the tiny model is built (or a GGUF converted) once, by rank 0. Returns one line.
    """
    say(2, f"load {run.cfg.model.name}")
    init_distributed()
    with main_first():
        resolve_model_path(run.cfg.model.name)
    with no_progress_bars():  # a bad max_seq_length stays the only line on stderr
        run.loaded = load.load_base(run.cfg)
    lm = run.loaded
    return f"{lm.backend} backend | {lm.path} | {lm.total_params:,} parameters | {dtype_line(run.cfg.model.dtype)}"


def add_lora(run: Run) -> str:
    """Stage 3: LoRA adapters on the target modules (none for finetune: full). Returns one line."""
    say(3, "LoRA adapters" if run.cfg.finetune != "full" else "full fine-tuning: every weight trains")
    with no_progress_bars():  # a bad target_modules stays the only line on stderr
        run.loaded = lora.add_lora(run.cfg, run.loaded)
    lm = run.loaded
    return (
        f"{lm.backend} backend | {lm.path} | trainable {lm.trainable_params:,} of {lm.total_params:,} parameters "
        f"({100 * lm.trainable_params / max(lm.total_params, 1):.2f} %)"
    )


def parameter_groups(run: Run) -> str:
    """Trainable / total parameters per group (embeddings, attention, mlp, lora, ...), a few lines."""
    return format_groups(params_by_group(run.loaded.model))


def load_data(run: Run) -> str:
    """Stage 4: the examples tokenized with the model's tokenizer (prompt tokens -100) and checked; then the run
    folder is opened (resume point, an overwritten run set aside) and gets config.yaml and environment.json.
    Returns one line on what training will see."""
    say(4, "tokenize the data")
    cfg = run.cfg
    with no_progress_bars():
        run.data = prepare(cfg, run.loaded.tokenizer, run.examples)
    check_trainable(run.data, cfg)
    if eval_strategy(cfg.train) != "no" and (run.data.test is None or len(run.data.test) == 0):
        raise DataError(no_test_split(cfg))
    resume_from = aside = None
    if is_main_process():
        folder = run.folder
        resume_from, aside = folder.prepare(cfg)
        source = model_source(run.loaded.path)  # a GGUF-converted base: which file, by hash, under which licence
        header = (
            f"model.name {cfg.model.name}: GGUF sha256 {source['sha256']}, licence {source['license']}"
            if source
            else ""
        )
        if run.data.mix:  # the shares the mix came to, beside the weights that asked for them
            header = "\n".join([header, "data mix:", *mix_lines(run.data.mix)]).strip("\n")
        save_config(cfg, folder.config_file, header)
        path = None if isinstance(run.recipe, dict) else run.recipe
        recipe = {"path": path, "sections": isinstance(run.recipe, dict), "changes": recipe_changes(run.recipe, cfg)}
        env = {**environment(), "model_source": source, "recipe": recipe, "started_from": run.loaded.started_from}
        write_json(folder.environment_file, env)  # started_from: the adapter model.adapter continues, or None
    run.resume_from = from_main(resume_from)  # every rank resumes from the same step (or none does)
    run.set_aside = aside
    return f"data: {data_line(run.data, cfg)}"


def recipe_changes(recipe: str | dict | None, cfg: RunConfig) -> list[dict]:
    """What the run's config changed from its recipe (a params file, papermill -f sections, or the library defaults): --set, notebook parameters,
    and what the run resolved (data.task auto -> the task), as [{"key", "recipe", "run"}]."""
    from unsloth_sft.config.diff import flatten
    from unsloth_sft.config.load import load_config

    try:
        if isinstance(recipe, dict):
            base = load_config(None, params=recipe).to_dict()
        else:
            base = load_config(recipe).to_dict() if recipe else RunConfig().to_dict()
    except SFTError:  # the file changed or moved since: the diff is what is lost, not the run
        return []
    old, new = flatten(base), flatten(cfg.to_dict())
    return [
        {"key": k, "recipe": old.get(k), "run": new.get(k)}
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    ]


def start(cfg: RunConfig, recipe: str | Path | None = None) -> Run:
    """Stages 1-4: checks, base model, LoRA, data and the run folder, ready to `fit`.

    With several processes every rank calls this; rank 0 alone writes, and the others take its resume point.
    """
    run = begin(cfg, recipe)
    try:
        for step in (load_base, add_lora, load_data, parameter_groups):  # load_base's line: the compute dtype, CPU
            line = step(run)
            if is_main_process():
                print(line, flush=True)
    except BaseException:
        if run.lock is not None:  # a bad model or data: the folder is free again at once
            run.lock.release()
        raise
    return run


def quick_generation(run: Run, n: int = 3) -> list[dict]:
    """The model's greedy answers, as it is now, to the run's first n examples (`pick_examples`: the test split,
    else training), with the recipe's eval settings: [{"prompt", "reference", "output"}]; none for raw text."""
    d, lm = run.data, run.loaded
    if tasks.get(d.task).metrics is None:  # raw text: nothing to answer
        return []
    picked = pick_examples(run.examples, n)
    prompts = picked.prompts(lm.tokenizer, d.template)
    outputs = generate(lm.model, lm.tokenizer, prompts, run.cfg.eval, lm.backend)
    references = [c[-1]["content"] for c in picked.conversations]
    return [{"prompt": p, "reference": r, "output": o} for p, r, o in zip(prompts, references, outputs)]


def no_test_split(cfg: RunConfig) -> str:
    return (
        f"{' + '.join(source_names(cfg.data))}: evaluation during training (train.eval_steps / eval_strategy) needs a test split, and "
        "it is empty; set data.test_size (e.g. 0.1) or data.test_split"
    )


def check_eval_data(cfg: RunConfig, examples) -> None:
    """Evaluation during training has test examples to score, and train.eval_metric suits the task."""
    from unsloth_sft.evaluation.evaluate import check_eval_metric

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
    line = (
        f"{d.task} task, {d.template} template, {d.train_examples or 'streamed'} train / {test} test examples, "
        f"{d.skipped} skipped (empty answer), {d.truncated} truncated at {cfg.model.max_seq_length} tokens"
    )
    if d.mix:  # data.sources: what each source gave; eval scores the union of their test splits
        line += f"\nmix of {len(d.mix)} sources (test: each source's own, evaluated together):\n"
        line += "\n".join(mix_lines(d.mix))
    return line


def fit(run: Run) -> dict:
    """Train with TRL's SFTTrainer (resuming from the newest checkpoint when there is one)."""
    say(5, "train")
    cfg, d, tok = run.cfg, run.data, run.loaded.tokenizer
    evaluating = eval_strategy(cfg.train) != "no"
    callbacks = []
    if cfg.train.eval_metric:
        from unsloth_sft.evaluation.evaluate import generation_metric_callback

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
        train_examples=d.train_examples,  # None: streamed
        skipped_examples=d.skipped,
        truncated_examples=d.truncated,
        resumed_from=str(run.resume_from) if run.resume_from else None,
        started_from=lm.started_from,
    )
    if d.mix:
        run.metrics["data_mix"] = d.mix  # each source's task, examples and share of training
    return run.metrics


def finish(run: Run) -> dict:
    """Stage 6: the loss curve, then the export plan (adapter / merged weights / GGUF / cards / check / Hub, as
    export.save_methods says), then metrics.json last (it marks the run finished).

    Rank 0 writes everything; the other ranks only join the weight gather of FSDP / ZeRO-3, then return.
    """
    say(6, "save: " + ", ".join(run.cfg.export.save_methods))
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
    live = Live(lm.model, lm.tokenizer, lm.backend, lm.path, sharded)
    run.metrics["exported"] = export(
        folder,
        cfg,
        cfg.export.save_methods,
        live,
        run.metrics,
        push_to_hub=cfg.export.push_to_hub,
        private=cfg.export.private,
    )
    write_json(folder.metrics_file, run.metrics)
    write_run_report(folder)
    RunDir.drop(run.set_aside)  # the new run is complete: the one it replaced can go
    if run.lock is not None:
        run.lock.release()
    return run.metrics


def release(run: Run) -> None:
    """Free the training model and trainer (evaluation then loads the saved adapter, not a second copy)."""
    import gc

    run.trainer = None
    if run.loaded is not None:
        run.loaded.model = None
    gc.collect()


def run_training(cfg: RunConfig, recipe: str | Path | None = None) -> dict:
    """The whole training job: start, fit, finish. Returns metrics.json's content. `recipe`: the params file the
    config came from (the run report shows what the run changed from it)."""
    run = start(cfg, recipe)
    try:
        fit(run)
        return finish(run)
    finally:
        if run.lock is not None:  # a failed run frees its folder for the rerun that resumes it
            run.lock.release()


__all__ = [
    "Run",
    "add_lora",
    "begin",
    "data_line",
    "finish",
    "fit",
    "load_base",
    "load_data",
    "parameter_groups",
    "quick_generation",
    "release",
    "run_training",
    "start",
]
