"""Base against tuned on a run's test split, with the metric that fits the task; the generation metric during training."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from unsloth_sft import tasks
from unsloth_sft.config.data import source_names
from unsloth_sft.config.run import RunConfig
from unsloth_sft.core.errors import DataError
from unsloth_sft.core.files import remove_leftovers
from unsloth_sft.core.progress import stage
from unsloth_sft.core.quiet import warn
from unsloth_sft.data.prompts import prompts_for
from unsloth_sft.evaluation.generate import generate, generation_speed
from unsloth_sft.evaluation.loss import eval_loss
from unsloth_sft.evaluation.run_report import report_line, write_run_report
from unsloth_sft.runs.folder import RunDir
from unsloth_sft.runs.lock import locked


def score(task: tasks.Task, references: list[str], tuned: list[str], base: list[str] | None = None) -> dict:
    """The task's metrics of the tuned (and base) outputs: {metric: {"tuned": x, "base": y}}."""
    scores = {name: {"tuned": value} for name, value in task.metrics(tuned, references).items()}
    for name, value in (task.metrics(base, references) if base else {}).items():
        scores[name]["base"] = value
    return scores


def evaluate_run(cfg: RunConfig, run: RunDir | Path, data_file: str | None = None) -> dict[str, Any]:
    """Score the base and the tuned model on the test split; write eval/ predictions, metrics, report, chart.

    `data_file`: the file `cfg` scores on instead of the run's own test split (see runs.config.run_config); the
    results then go to eval-NAME/, beside the run's own eval/.
    """
    run = RunDir.of(run)
    if cfg.data.task == "auto" and run.task:  # the task the run resolved when it started, not a new guess
        cfg = cfg.with_task(run.task)
    with locked(run.path):  # one writer per run folder: not while it trains or exports
        run.model()  # no adapter/ or merged/: says so before the data is read
        run.check_writable()  # a read-only run folder says so now, not after the evaluation
        for note in remove_leftovers(run.path):  # what a killed earlier command left half-written
            print(note)
        if not run.is_finished:
            warn(f"{run} is not finished (no metrics.json): scoring the weights it has")
        result = _evaluate(cfg, run, data_file)
        report = write_run_report(run)  # the report shows the evaluation now
        result["summary"] += "\n" + report_line(report)  # what `eval` prints: the page comes last
        return result


def _evaluate(cfg: RunConfig, run: RunDir, data_file: str | None) -> dict[str, Any]:
    from unsloth_sft.data.examples import has_test, load_examples, prepare
    from unsloth_sft.evaluation.report import write_eval
    from unsloth_sft.models.load import load_for_inference
    from unsloth_sft.tasks import metrics as M

    no_test = DataError(
        f"{' + '.join(source_names(cfg.data))}: the test split is empty; set data.test_size (e.g. 0.1) or data.test_split"
    )
    stage(1, 4, "read the test data", "eval")
    examples = load_examples(cfg)  # data problems first: they cost seconds, a model load can cost minutes
    record = tasks.get(examples.task)
    if not has_test(examples, cfg):
        raise no_test
    # the adapter on its base when the run has one: the base is the same weights with the adapter off
    which = run.model(prefer="adapter", base=cfg.model.name)
    stage(2, 4, f"load {which.weights}" + (" + adapter" if which.adapter else ""), "eval")
    model, tokenizer = load_for_inference(which.weights, which.adapter)
    data = prepare(cfg, tokenizer, examples)
    if data.test is None or len(data.test) == 0:  # e.g. raw text too short to carve a test block from
        raise no_test
    test, test_convs = capped(cfg, data)
    base_model = None if which.base_switchable else load_for_inference(which.base)[0]

    def as_base():
        return model.disable_adapter() if which.base_switchable else contextlib.nullcontext()

    result: dict[str, Any] = {
        "task": data.task,
        "template": data.template,
        "data": " + ".join(source_names(cfg.data)),
        "test_examples": len(test),
    }
    if len(test) < len(data.test):
        result["test_split_examples"] = len(data.test)
    stage(3, 4, f"eval loss of base and tuned on {len(test)} test examples", "eval")
    with as_base():
        base_loss = eval_loss(base_model or model, tokenizer, test, cfg.eval.batch_size, desc="eval loss, base")
    tuned_loss = eval_loss(model, tokenizer, test, cfg.eval.batch_size, desc="eval loss, tuned")
    scores: dict[str, dict] = {"eval_loss": {"base": base_loss, "tuned": tuned_loss}}
    if record.metrics is None:  # nothing to generate (raw text): the loss as perplexity
        stage(4, 4, "perplexity from the eval loss", "eval")
        scores["perplexity"] = {"base": M.perplexity(base_loss), "tuned": M.perplexity(tuned_loss)}
        rows = []
    else:
        convs = test_convs[: cfg.eval.num_examples]
        references = [c[-1]["content"] for c in convs]
        tuned_prompts = prompts_for(tokenizer, convs, data.template)
        shot = data.train_conversations[0] if cfg.eval.num_shots == 1 and data.train_conversations else None
        base_prompts = prompts_for(tokenizer, convs, data.template, shot) if shot else tuned_prompts
        stage(4, 4, f"generate for {len(convs)} test examples, tuned then base", "eval")
        started = time.perf_counter()
        tuned_out = generate(model, tokenizer, tuned_prompts, cfg.eval, desc="generating, tuned")
        result["generation"] = generation_speed(tokenizer, tuned_out, time.perf_counter() - started)
        base_out: list[str] = []
        if cfg.eval.compare_base:
            with as_base():
                base_out = generate(base_model or model, tokenizer, base_prompts, cfg.eval, desc="generating, base")
        scores.update(score(record, references, tuned_out, base_out))
        rows = [
            {"input": p, "reference": r, "base": b, "tuned": t}
            for p, r, b, t in zip(tuned_prompts, references, base_out or [None] * len(references), tuned_out)
        ]
    for values in scores.values():
        if values.get("base") is not None and values.get("tuned") is not None:
            values["delta"] = values["tuned"] - values["base"]
    result["metrics"] = scores
    result["summary"] = write_eval(run.eval_dir(data_file), cfg.run_name, result, rows)
    result["examples"] = rows  # after the write: predictions.jsonl has them, metrics.json need not
    return result


def sample_indices(total: int, cap: int | None, seed: int) -> list[int] | None:
    """`cap` of `total` positions drawn with `seed`, in ascending order; None when the cap takes them all."""
    if cap is None or total <= cap:
        return None
    import random

    return sorted(random.Random(seed).sample(range(total), cap))


def capped(cfg: RunConfig, data) -> tuple[Any, list[list[dict]]]:
    """The test examples `eval` scores: all of them, or eval.max_samples drawn with train.seed (said in one line).

    The tokenized test rows and the test conversations are one-to-one (raw text has blocks and no conversations),
    so the same positions pick both: eval loss and generation score the same examples, for base and tuned alike.
    """
    test, convs = data.test, data.test_conversations
    picked = sample_indices(len(test), cfg.eval.max_samples, cfg.train.seed)
    if picked is None:
        return test, convs
    print(
        f"eval: scoring {len(picked)} of {len(test)} test examples, drawn with train.seed {cfg.train.seed} "
        f"(eval.max_samples {cfg.eval.max_samples}; null scores all)",
        flush=True,
    )
    return test.select(picked), [convs[i] for i in picked] if convs else convs


def check_eval_metric(cfg: RunConfig, task: str) -> None:
    """train.eval_metric must be one the task's scoring computes (gsm8k: exact_match; raw text: none)."""
    name = cfg.train.eval_metric
    if name is None:
        return
    record = tasks.get(task)
    names = list(record.metrics(["a"], ["a"])) if record.metrics else []
    if name not in names:
        fix = f"use one of {', '.join(names)}" if names else "score raw text by its eval loss: unset it"
        raise DataError(f"train.eval_metric {name} is not computed for the {task} task; {fix}")


def generation_metric_callback(
    cfg: RunConfig, tokenizer, conversations: list[list[dict]], template: str, task: str, backend: str | None = None
):
    """A TrainerCallback that, at each evaluation, generates for the first train.eval_samples test conversations
    and adds train.eval_metric (scored by the task's metrics, as `eval` scores) to the evaluation's metrics.

    It runs before EarlyStoppingCallback and the Trainer's best-checkpoint choice see the metrics, so both can use it;
    the Trainer has already logged the evaluation, so the value is added to that log entry too (metrics.json).
    """
    from transformers import TrainerCallback

    scorer = tasks.get(task).metrics
    convs = conversations[: cfg.train.eval_samples]
    references = [c[-1]["content"] for c in convs]
    prompts = prompts_for(tokenizer, convs, template)
    name = cfg.train.eval_metric

    class GenerationMetric(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            outputs = generate(model, tokenizer, prompts, cfg.eval, backend, progress=False)  # unsloth: for_inference
            value = float(scorer(outputs, references)[name])
            metrics[f"eval_{name}"] = value
            if state.log_history and "eval_loss" in state.log_history[-1]:
                state.log_history[-1][f"eval_{name}"] = value

    return GenerationMetric()
