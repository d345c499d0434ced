"""Inference on new inputs: a run's model, prompts from strings / messages / dataset columns, JSONL in and out."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from unsloth_sft import tasks
from unsloth_sft.config.run import RunConfig
from unsloth_sft.core.errors import DataError, ModelError
from unsloth_sft.data.columns import detect_task, resolve_columns
from unsloth_sft.data.examples import load_examples, pick_examples
from unsloth_sft.data.prompts import choose_template, render_prompt, text_prompt
from unsloth_sft.data.rows import to_messages
from unsloth_sft.runs.folder import RunDir


def recipe_task(cfg: RunConfig) -> str:
    """The recipe's task: data.task, or what training detects from the source (data.load_examples)."""
    return cfg.data.task if cfg.data.task != "auto" else load_examples(cfg).task


def run_task(run: RunDir, cfg: RunConfig) -> str:
    """The task a run trained on: its config says it (saved when training started); else the recipe's."""
    return cfg.data.task if cfg.data.task != "auto" else run.task or recipe_task(cfg)


def messages_for(value: Any, cfg: RunConfig, task: str, where: str) -> tuple[list[dict], str]:
    """A conversation and its task from an input: a string, {"messages": [...]}, or the dataset's own columns."""
    record = tasks.get(task)
    if isinstance(value, str):
        if record.shape == "messages":
            return [{"role": "user", "content": value}], task
        field = record.fields[0]
        return to_messages({field: value}, task, {field: field}, cfg.data, where, require_answer=False), task
    talks = [
        t for t in tasks.TASKS.values() if t.shape == "messages" and isinstance(value, dict) and t.fields[0] in value
    ]
    if talks:  # {"messages": [...]}: a conversation, whatever the run's task
        field = talks[0].fields[0]
        return to_messages(value, talks[0].name, {field: field}, cfg.data, where, require_answer=False), talks[0].name
    if isinstance(value, dict):
        row_task = task if record.shape != "messages" else detect_task(list(value), cfg.data, where, answer=False)
        cols = resolve_columns(list(value), cfg.data, row_task, where, answer=False)
        return to_messages(value, row_task, cols, cfg.data, where, require_answer=False), row_task
    raise DataError(f"{where}: expected a string or an object, got {type(value).__name__}")


def prompt_text(value: Any, cfg: RunConfig, task: str, tokenizer, where: str) -> str:
    """The prompt the model continues: raw text for a text run, else the input rendered in the run's template."""
    if tasks.get(task).shape == "blocks":  # a raw-text run never saw a chat turn: it continues the text itself
        text = value.get(tasks.get(task).fields[0]) if isinstance(value, dict) else value
        if not isinstance(text, str):
            raise DataError(f'{where}: a raw-text run continues text; give a JSON string or {{"text": "..."}}')
        return text_prompt(tokenizer, text)  # BOS where the model expects one, as training blocks start
    messages, kind = messages_for(value, cfg, task, where)
    return render_prompt(tokenizer, messages, choose_template(kind, cfg.data, tokenizer))


def prompt_for(cfg: RunConfig, tokenizer, prompt: str | None, task: str | None = None) -> str:
    """The rendered prompt for `prompt` (None: the run's first example, `pick_examples`), in the recipe's template."""
    if prompt is not None:
        return prompt_text(prompt, cfg, task or recipe_task(cfg), tokenizer, "prompt")
    examples = load_examples(cfg)
    template = "plain" if examples.text_column is not None else choose_template(examples.task, cfg.data, tokenizer)
    return pick_examples(examples, 1).prompts(tokenizer, template)[0]


def read_input_lines(path: Path) -> list[tuple[int, Any, str | None]]:
    """(line number, parsed value or None, error or None) for each non-empty line of a JSONL file."""
    from unsloth_sft.data.sources import read_text

    out = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line), None))
        except json.JSONDecodeError as err:
            out.append(
                (
                    n,
                    None,
                    f"{path} line {n}: not JSON ({err.msg}); each line is JSON: a prompt in double "
                    'quotes ("Hello, \\"you\\"", newlines as \\n), or an object such as '
                    '{"messages": [...]} (json.dumps writes either)',
                )
            )
    return out


def check_model_arg(model: str) -> None:
    """An adapter folder passed as --model: say how to pass it instead (before a slow load fails on it)."""
    folder = Path(model)
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path") or "BASE"
        raise ModelError(
            f"--model {model} is a LoRA adapter folder, not a model; use --model {base} --adapter {model}"
            f"{' (or --run ' + str(folder.parent) + ')' if (folder.parent / 'config.yaml').is_file() else ''}"
        )


def infer_file(
    cfg: RunConfig, model_path: str, adapter: str | None, input_path: Path, output_path: Path, task: str | None = None
) -> dict:
    """Generate for each input line; lines that fail are reported by number and counted, the rest written.

    `task`: the task the model was trained on (None: the recipe's, or chat when its data is not here).
    """
    from unsloth_sft.core.files import atomic_write_text, check_output
    from unsloth_sft.evaluation.generate import generate
    from unsloth_sft.models.load import load_for_inference

    if not Path(input_path).is_file():
        raise DataError(f"{input_path}: input file not found")
    # never over the input (truncated before it is read) or below a file, before the model loads
    check_output(input_path, output_path, "--output", "the --input file", "write the answers to another file")
    check_model_arg(model_path)
    lines = read_input_lines(Path(input_path))
    model, tokenizer = load_for_inference(model_path, adapter)
    if task is None:
        try:
            task = recipe_task(cfg)
        except DataError:  # the recipe's data is not here (a Hub id offline): inputs say what they are
            task = "chat"
    prompts, kept, failed = [], [], 0
    for n, value, error in lines:
        try:
            if error:
                raise DataError(error)
            prompts.append(prompt_text(value, cfg, task, tokenizer, f"{input_path} line {n}"))
            kept.append((n, value))
        except DataError as err:
            failed += 1
            print(f"unsloth-sft: skipped: {err}", file=sys.stderr)
    outputs = generate(model, tokenizer, prompts, cfg.eval) if prompts else []
    rows = [{"line": n, "input": v, "output": o} for (n, v), o in zip(kept, outputs)]
    atomic_write_text(Path(output_path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"written": len(rows), "failed": failed, "output": str(output_path)}


def infer_target(
    run: str | None, model: str | None, adapter: str | None, params: str | None, overrides: list[str]
) -> tuple[RunConfig, str, str | None, str | None]:
    """(config, model, adapter, task) for `unsloth-sft infer`: --run RUN (or a run folder as --model), --model BASE
    --adapter RUN/adapter (the run's task and template), or --model M [--params P]."""
    from unsloth_sft.config.load import load_config
    from unsloth_sft.core.errors import ConfigError
    from unsloth_sft.runs.config import run_config, run_from_params

    if run is None and model and (Path(model) / "config.yaml").is_file():
        run, model = model, None  # a run folder given as --model: it is one
    if run is not None:
        if model or adapter:
            raise ConfigError("--run takes the model from the run folder; leave out --model and --adapter")
        folder, cfg = run_from_params(params, overrides, run)
        which = folder.model()
        if not folder.is_finished:
            from unsloth_sft.core.quiet import warn

            warn(f"{folder} is not finished (no metrics.json): answering with the weights it has")
        return cfg, which.weights, which.adapter, run_task(folder, cfg)
    if model is None:
        raise ConfigError("infer needs --run RUN_DIR, or --model BASE_OR_MERGED (with --adapter for a LoRA adapter)")
    if adapter and params is None and (Path(adapter).parent / "config.yaml").is_file():
        folder = RunDir(Path(adapter).parent)  # RUN/adapter: the run's task and template, not the library defaults
        cfg = run_config(folder, None, overrides)
        return cfg, model, adapter, run_task(folder, cfg)
    return load_config(params, overrides), model, adapter, None
