"""The training job as the stages the CLI and the training notebook share.

begin (checks, no model) -> load_base -> add_lora -> load_data (and the run folder) -> fit -> finish (save).
`start` is the first four; `run_training` is all of them. The notebook calls each stage in its own cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unsloth_sft import model, tasks
from unsloth_sft.chat_templates import template_text
from unsloth_sft.config import RunConfig, eval_strategy, save_config, source_names
from unsloth_sft.data import Examples, PreparedData, check_trainable, has_test, load_examples, prepare
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
    check_gguf_tools,
    export_unsloth,
    merge_adapter,
    model_card,
    push_folder,
    save_adapter,
    save_full,
    unsloth_only,
    verify_exports,
    write_card,
)
from unsloth_sft.gguf_models import model_source
from unsloth_sft.mix import mix_lines
from unsloth_sft.model import LoadedModel, format_groups, params_by_group, resolve_model_path
from unsloth_sft.quiet import import_backend, no_progress_bars
from unsloth_sft.runs import RunDir, write_json
from unsloth_sft.tracking import trackers
from unsloth_sft.train import build_trainer, environment, loss_history, plot_loss, train


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

    @property
    def run_dir(self) -> Path:
        return self.folder.path


def begin(cfg: RunConfig) -> Run:
    """Stage 1, before any model loads: the launch, the run folder (finished? resumable with this config?
    writable?), the data (read and shaped without a tokenizer), the chat template and the trackers are checked;
    data.task is resolved. Nothing is written: every input error stops here, in seconds, not after a model load.
    """
    cfg = check_launch(cfg)  # before anything is written or joined
    if "gguf" in cfg.export.save_methods:
        check_gguf_tools(cfg)  # a missing converter or quantizer says so now, not after training
    folder = RunDir(cfg.run_dir)
    if is_main_process():
        folder.check(cfg)
    examples = load_examples(cfg)
    cfg = cfg.with_task(examples.task)  # resolved once: config.yaml, eval and infer all say which task this is
    if examples.sources is not None:  # a mix: each source's task resolved too
        cfg = cfg.with_sources(examples.sources)
    check_eval_data(cfg, examples)
    backend = import_backend(cfg.model.backend)  # unsloth before anything imports transformers (trackers, model path)
    if cfg.model.chat_template:
        template_text(cfg.model.chat_template, backend)  # a bad name or file fails before the model loads
    trackers(cfg)  # an unknown or uninstalled train.report_to fails here, not after the model loaded
    return Run(cfg, folder, examples)


def load_base(run: Run) -> str:
    """Stage 2: the base model and tokenizer (unsloth's FastLanguageModel, or transformers + bitsandbytes).

    With several processes the tiny model is built (or a GGUF converted) once, by rank 0. Returns one line.
    """
    init_distributed()
    with main_first():
        resolve_model_path(run.cfg.model.name)
    with no_progress_bars():  # a bad max_seq_length stays the only line on stderr
        run.loaded = model.load_base(run.cfg)
    lm = run.loaded
    return f"{lm.backend} backend | {lm.path} | {lm.total_params:,} parameters"


def add_lora(run: Run) -> str:
    """Stage 3: LoRA adapters on the target modules (none for finetune: full). Returns one line."""
    with no_progress_bars():  # a bad target_modules stays the only line on stderr
        run.loaded = model.add_lora(run.cfg, run.loaded)
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
        save_config(cfg, folder / ".config.yaml.tmp", header)
        (folder / ".config.yaml.tmp").replace(folder.config_file)
        write_json(folder.environment_file, {**environment(), "model_source": source})
    run.resume_from = from_main(resume_from)  # every rank resumes from the same step (or none does)
    run.set_aside = aside
    return f"data: {data_line(run.data, cfg)}"


def start(cfg: RunConfig) -> Run:
    """Stages 1-4: checks, base model, LoRA, data and the run folder, ready to `fit`.

    With several processes every rank calls this; rank 0 alone writes, and the others take its resume point.
    """
    run = begin(cfg)
    load_base(run)
    lines = [add_lora(run), load_data(run), parameter_groups(run)]
    if is_main_process():
        print("\n".join(lines))
    return run


def quick_generation(run: Run, n: int = 3) -> list[dict]:
    """The model's greedy answers, as it is now, to the first n test examples (training ones without a test
    split), with the recipe's eval settings: [{"prompt", "reference", "output"}]; none for raw text."""
    from unsloth_sft.evaluate import generate, prompts_for

    d, lm = run.data, run.loaded
    if tasks.get(d.task).metrics is None:  # raw text: nothing to answer
        return []
    examples = d.test_conversations[:n] or d.train_conversations[:n]
    prompts = prompts_for(lm.tokenizer, examples, d.template)
    outputs = generate(lm.model, lm.tokenizer, prompts, run.cfg.eval, lm.backend)
    return [{"prompt": p, "reference": c[-1]["content"], "output": o} for p, c, o in zip(prompts, examples, outputs)]


def no_test_split(cfg: RunConfig) -> str:
    return (
        f"{' + '.join(source_names(cfg.data))}: evaluation during training (train.eval_steps / eval_strategy) needs a test split, and "
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
    line = (
        f"{d.task} task, {d.template} template, {len(d.train)} train / {test} test examples, {d.skipped} skipped "
        f"(empty answer), {d.truncated} truncated at {cfg.model.max_seq_length} tokens"
    )
    if d.mix:  # data.sources: what each source gave; eval scores the union of their test splits
        line += f"\nmix of {len(d.mix)} sources (test: each source's own, evaluated together):\n"
        line += "\n".join(mix_lines(d.mix))
    return line


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
    if d.mix:
        run.metrics["data_mix"] = d.mix  # each source's task, examples and share of training
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
    if "merged_4bit_forced" in methods:  # unsloth's saver, from the live model on a GPU only
        unsloth_only("merged_4bit_forced", lm.backend)
        exported["merged_4bit_forced"] = str(
            export_unsloth(lm.model, lm.tokenizer, "merged_4bit_forced", folder / "merged_4bit_forced")
        )
    if "gguf" in methods and not folder.has_merged:  # llama.cpp converts the merged folder
        merge_adapter(lm.path, folder.adapter, folder.merged, cfg.export.max_shard_size)
        exported["merged_16bit"] = str(folder.merged)
    exported.update(verify_exports(folder, cfg, methods, run.metrics))
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
