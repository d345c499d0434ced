"""Generation, eval loss, and base-vs-tuned evaluation with the metric that fits the task."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from unsloth_sft import tasks
from unsloth_sft.config import EvalConfig, RunConfig, source_names
from unsloth_sft.errors import DataError, ModelError
from unsloth_sft.prompts import render, render_prompt, stop_token_ids
from unsloth_sft.runs import RunDir


def generation_kwargs(ecfg: EvalConfig, tokenizer) -> dict[str, Any]:
    """generate() arguments from config; sampling knobs only when sampling (greedy ignores them)."""
    kwargs: dict[str, Any] = dict(
        max_new_tokens=ecfg.max_new_tokens,
        do_sample=ecfg.do_sample,
        eos_token_id=stop_token_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        repetition_penalty=ecfg.repetition_penalty,
    )
    if ecfg.no_repeat_ngram_size:
        kwargs["no_repeat_ngram_size"] = ecfg.no_repeat_ngram_size
    if ecfg.do_sample:
        kwargs.update(temperature=ecfg.temperature, top_k=ecfg.top_k, top_p=ecfg.top_p)
    return kwargs


@contextlib.contextmanager
def inference_mode(model, backend: str | None):
    """unsloth's fast inference path while generating, then back to training mode."""
    fast = None
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        fast = FastLanguageModel
        fast.for_inference(model)
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        if fast is not None:
            fast.for_training(model)
        if was_training:
            model.train()


def generate(
    model,
    tokenizer,
    prompts: list[str],
    ecfg: EvalConfig,
    backend: str | None = None,
    progress: bool = True,
    streamer=None,
    stopping_criteria=None,
) -> list[str]:
    """Batched generation with left padding; returns only the new text of each prompt.

    `streamer` and `stopping_criteria` go to `model.generate` (the playground streams and stops with them).
    """
    import torch
    from tqdm.auto import tqdm

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models continue from the last real token
    device = next(model.parameters()).device
    outputs: list[str] = []
    batches = range(0, len(prompts), ecfg.batch_size)
    kwargs = generation_kwargs(ecfg, tokenizer)
    try:
        with inference_mode(model, backend), torch.no_grad():
            for start in tqdm(batches, desc="generating", disable=not progress or len(batches) < 2):
                batch = prompts[start : start + ecfg.batch_size]
                enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                out = model.generate(**enc, **kwargs, streamer=streamer, stopping_criteria=stopping_criteria)
                new = out[:, enc["input_ids"].shape[1] :]
                outputs.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return outputs


LOGITS_BUDGET = 2**26  # float32 logits held at once in eval_loss: 256 MiB (a 262k vocabulary x 256 positions)


def eval_loss(model, tokenizer, dataset, batch_size: int = 8, per_row: bool | None = None) -> float | None:
    """Mean cross-entropy per trained token (labels != -100) over a tokenized dataset.

    Logits are computed only at positions that predict a trained token (`logits_to_keep`), in row chunks
    that keep them under LOGITS_BUDGET: full logits of a 262k-vocabulary model at batch 8 x 512 tokens
    would be 4 GiB in float32. On a CPU each row goes alone, cut to its own length and with its own trained
    positions: a batch shares one index set (the union of its rows'), and the vocabulary projection at the
    other rows' positions was a third of Gemma-3 270M's eval time. `per_row` forces either way (None: on a CPU).
    """
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    if dataset is None or len(dataset) == 0:
        return None
    collate = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().weight.shape[0]
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = collate([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
            targets = batch["labels"][:, 1:]
            keep = (targets != -100).any(dim=0).nonzero().squeeze(-1)  # positions whose next token is trained
            if len(keep) == 0:
                continue
            one_row = device.type == "cpu" if per_row is None else per_row
            chunk = 1 if one_row else max(1, LOGITS_BUDGET // (len(keep) * vocab))
            for r in range(0, len(rows), chunk):
                ids, mask, labels = (batch[k][r : r + chunk] for k in ("input_ids", "attention_mask", "labels"))
                if chunk == 1:  # one row: no padding, and only its own trained positions
                    length = int(mask.sum())
                    ids, mask, labels = ids[:, :length], mask[:, :length], labels[:, :length]
                    keep = (labels[:, 1:] != -100).any(dim=0).nonzero().squeeze(-1)
                    if len(keep) == 0:
                        continue
                logits = model(
                    input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep.to(device)
                ).logits.float()
                labels = labels[:, 1:][:, keep].to(device)
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
                )
                total += loss.item()
                count += int((labels != -100).sum())
    return total / count if count else None


def shot_prefix(tokenizer, example: list[dict], template: str) -> list[dict] | str:
    """One worked example for the base model's prompt: messages for chat templates, text for plain ones."""
    if template == "chat":
        return [m for m in example if m["role"] != "system"][:2]
    text = render(tokenizer, example, template).text
    return text[: len(text) - len(tokenizer.eos_token or "")] + "\n\n"


def prompts_for(tokenizer, conversations: list[list[dict]], template: str, shot: list[dict] | None = None) -> list[str]:
    """Inference prompts for test conversations (optionally one-shot), from the same template as training."""
    out = []
    for conv in conversations:
        if shot is None:
            out.append(render_prompt(tokenizer, conv, template))
        elif template == "chat":
            out.append(render_prompt(tokenizer, shot_prefix(tokenizer, shot, template) + conv, template))
        else:
            prompt = render_prompt(tokenizer, conv, template)
            bos = tokenizer.bos_token or ""
            body = prompt[len(bos) :] if bos and prompt.startswith(bos) else prompt
            prefix = shot_prefix(tokenizer, shot, template)
            out.append(prefix + body)  # the shot keeps its <bos>; the prompt's own is dropped
    return out


def generation_speed(tokenizer, outputs: list[str], seconds: float) -> dict:
    """New tokens per second of wall time for one generate() pass over the eval prompts (batched, greedy)."""
    tokens = sum(len(tokenizer(o, add_special_tokens=False).input_ids) for o in outputs)
    return {"new_tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / max(seconds, 1e-9), 1)}


def score(task: tasks.Task, references: list[str], tuned: list[str], base: list[str] | None = None) -> dict:
    """The task's metrics of the tuned (and base) outputs: {metric: {"tuned": x, "base": y}}."""
    scores = {name: {"tuned": value} for name, value in task.metrics(tuned, references).items()}
    for name, value in (task.metrics(base, references) if base else {}).items():
        scores[name]["base"] = value
    return scores


def evaluate_run(cfg: RunConfig, run: RunDir | Path, data_file: str | None = None) -> dict[str, Any]:
    """Score the base and the tuned model on the test split; write eval/ predictions, metrics, report, chart.

    `data_file`: the file `cfg` scores on instead of the run's own test split (see runconfig.run_config); the
    results then go to eval-NAME/, beside the run's own eval/.
    """
    from unsloth_sft import metrics as M
    from unsloth_sft.data import has_test, load_examples, prepare
    from unsloth_sft.model import load_for_inference
    from unsloth_sft.report import write_eval

    run = RunDir.of(run)
    if cfg.data.task == "auto" and run.task:  # the task the run resolved when it started, not a new guess
        cfg = cfg.with_task(run.task)
    has_adapter = run.has_adapter
    if run.kind is None:
        raise ModelError(f"{run}: no adapter/ or merged/ model in this run folder; train first (unsloth-sft train)")
    no_test = DataError(
        f"{' + '.join(source_names(cfg.data))}: the test split is empty; set data.test_size (e.g. 0.1) or data.test_split"
    )
    examples = load_examples(cfg)  # data problems first: they cost seconds, a model load can cost minutes
    record = tasks.get(examples.task)
    if not has_test(examples, cfg):
        raise no_test
    if has_adapter:  # the base is the same weights with the adapter switched off: one model in memory
        model, tokenizer = load_for_inference(cfg.model.name, str(run.adapter))
    else:
        model, tokenizer = load_for_inference(str(run.merged))
    data = prepare(cfg, tokenizer, examples)
    if data.test is None or len(data.test) == 0:  # e.g. raw text too short to carve a test block from
        raise no_test
    base_model = None if has_adapter else load_for_inference(cfg.model.name)[0]

    def as_base():
        return model.disable_adapter() if has_adapter else contextlib.nullcontext()

    result: dict[str, Any] = {
        "task": data.task,
        "template": data.template,
        "data": " + ".join(source_names(cfg.data)),
        "test_examples": len(data.test),
    }
    with as_base():
        base_loss = eval_loss(base_model or model, tokenizer, data.test, cfg.eval.batch_size)
    tuned_loss = eval_loss(model, tokenizer, data.test, cfg.eval.batch_size)
    scores: dict[str, dict] = {"eval_loss": {"base": base_loss, "tuned": tuned_loss}}
    if record.metrics is None:  # nothing to generate (raw text): the loss as perplexity
        scores["perplexity"] = {"base": M.perplexity(base_loss), "tuned": M.perplexity(tuned_loss)}
        rows = []
    else:
        convs = data.test_conversations[: cfg.eval.num_examples]
        references = [c[-1]["content"] for c in convs]
        tuned_prompts = prompts_for(tokenizer, convs, data.template)
        shot = data.train_conversations[0] if cfg.eval.num_shots == 1 and data.train_conversations else None
        base_prompts = prompts_for(tokenizer, convs, data.template, shot) if shot else tuned_prompts
        started = time.perf_counter()
        tuned_out = generate(model, tokenizer, tuned_prompts, cfg.eval)
        result["generation"] = generation_speed(tokenizer, tuned_out, time.perf_counter() - started)
        base_out: list[str] = []
        if cfg.eval.compare_base:
            with as_base():
                base_out = generate(base_model or model, tokenizer, base_prompts, cfg.eval)
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
