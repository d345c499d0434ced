"""Inference on new inputs: a run's model, prompts from strings / messages / dataset columns, JSONL in and out."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from unsloth_sft.config import RunConfig
from unsloth_sft.data import TASK_FIELDS, choose_template, detect_task, load_examples, to_messages
from unsloth_sft.errors import DataError, ModelError
from unsloth_sft.prompts import render_prompt


def load_run_model(cfg: RunConfig, run_dir: Path):
    """The run's merged model when it has one, else the base with its adapter: (model, tokenizer)."""
    from unsloth_sft.export import ADAPTER_DIR, MERGED_DIR
    from unsloth_sft.model import load_for_inference

    merged, adapter = Path(run_dir) / MERGED_DIR, Path(run_dir) / ADAPTER_DIR
    if (merged / "config.json").is_file():
        return load_for_inference(str(merged))
    if (adapter / "adapter_config.json").is_file():
        return load_for_inference(cfg.model.name, str(adapter))
    raise ModelError(f"{run_dir}: no merged/ or adapter/ model in this run folder; train first (unsloth-sft train)")


def recipe_task(cfg: RunConfig) -> str:
    """The recipe's task: data.task, or what training detects from the source (data.load_examples)."""
    return cfg.data.task if cfg.data.task != "auto" else load_examples(cfg).task


def messages_for(value: Any, cfg: RunConfig, task: str, where: str) -> tuple[list[dict], str]:
    """A conversation and its task from an input: a string, {"messages": [...]}, or the dataset's own columns."""
    if isinstance(value, str):
        if task in ("chat", "text"):
            return [{"role": "user", "content": value}], "chat"
        field = TASK_FIELDS[task][0]
        return to_messages({field: value}, task, {field: field}, cfg.data, where, require_answer=False), task
    if isinstance(value, dict) and "messages" in value:
        return to_messages(value, "chat", {"messages": "messages"}, cfg.data, where, require_answer=False), "chat"
    if isinstance(value, dict):
        from unsloth_sft.data import _resolve_columns

        row_task = task if task not in ("chat", "text") else detect_task(list(value), cfg.data, where, answer=False)
        cols = _resolve_columns(list(value), cfg.data, row_task, where, answer=False)
        return to_messages(value, row_task, cols, cfg.data, where, require_answer=False), row_task
    raise DataError(f"{where}: expected a string or an object, got {type(value).__name__}")


def prompt_for(cfg: RunConfig, tokenizer, prompt: str | None) -> str:
    """The rendered prompt for `prompt` (None: the recipe's first test example), in the recipe's template."""
    if prompt is None:
        examples = load_examples(cfg)
        messages, kind = (examples.test_conversations or examples.train_conversations)[0], examples.task
    else:
        messages, kind = messages_for(prompt, cfg, recipe_task(cfg), "prompt")
    return render_prompt(tokenizer, messages, choose_template(kind, cfg.data, tokenizer))


def read_input_lines(path: Path) -> list[tuple[int, Any, str | None]]:
    """(line number, parsed value or None, error or None) for each non-empty line of a JSONL file."""
    from unsloth_sft.sources import _read_text

    out = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line), None))
        except json.JSONDecodeError as err:
            out.append((n, None, f"{path} line {n}: invalid JSON ({err.msg}); the other lines were still processed"))
    return out


def infer_file(cfg: RunConfig, model_path: str, adapter: str | None, input_path: Path, output_path: Path) -> dict:
    """Generate for each input line; lines that fail are reported by number and counted, the rest written."""
    from unsloth_sft.evaluate import generate
    from unsloth_sft.model import load_for_inference
    from unsloth_sft.runs import atomic_write_text

    if not Path(input_path).is_file():
        raise DataError(f"{input_path}: input file not found")
    lines = read_input_lines(Path(input_path))
    model, tokenizer = load_for_inference(model_path, adapter)
    try:
        task = recipe_task(cfg)
    except DataError:  # the recipe's data is not here (a Hub id offline): inputs say what they are
        task = "chat"
    prompts, kept, failed = [], [], 0
    for n, value, error in lines:
        try:
            if error:
                raise DataError(error)
            messages, kind = messages_for(value, cfg, task, f"{input_path} line {n}")
            prompts.append(render_prompt(tokenizer, messages, choose_template(kind, cfg.data, tokenizer)))
            kept.append((n, value))
        except DataError as err:
            failed += 1
            print(f"unsloth-sft: skipped: {err}", file=sys.stderr)
    outputs = generate(model, tokenizer, prompts, cfg.eval) if prompts else []
    rows = [{"line": n, "input": v, "output": o} for (n, v), o in zip(kept, outputs)]
    atomic_write_text(Path(output_path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"written": len(rows), "failed": failed, "output": str(output_path)}
