"""The playground page (`unsloth-sft chat RUN_DIR`): base and tuned answer the same input side by side (Gradio).

One model is in memory, as in `eval`: the base is the same weights with the LoRA adapter switched off (peft's
`disable_adapter()`). Prompts go through `infer.prompt_text`, so the model sees exactly the text training and
`infer` render in the run's template; generation is `evaluate.generate`, streamed with `TextIteratorStreamer`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from unsloth_sft.config.run import EvalConfig, RunConfig
from unsloth_sft.core.errors import ConfigError, DataError, RunError
from unsloth_sft.runs.folder import RunDir

HOST = "127.0.0.1"  # local only: the page drives a model on this machine; never a public share link
DEFAULT_PORT = 7860  # Gradio's own default
UI_PIP = 'pip install "unsloth-sft[ui]"'
MAX_EXAMPLES = 20  # test examples offered in the page's drop-down
REFERENCE_CHARS = 300  # raw-text runs: the reference is the text's next this many characters


@dataclass
class Playground:
    """What the page serves: the run, its config and task, the model (adapter on) and the test examples."""

    run: RunDir
    cfg: RunConfig
    task: str
    model: Any
    tokenizer: Any
    has_base: bool  # a LoRA adapter that can be switched off; a merged-only folder has no base in memory
    examples: list[tuple[str, str]] = field(default_factory=list)  # (input, reference) from the test split
    examples_from: str = "test split"
    stop: threading.Event = field(default_factory=threading.Event)  # set by the page's Stop button

    @property
    def no_base_reason(self) -> str:
        return (
            f"Only the tuned model answers: {self.run} has no LoRA adapter (adapter/), only merged weights, so there "
            "is no base to switch back to in the same weights. `unsloth-sft eval` loads the base separately."
        )


def check_ui_installed() -> None:
    """Gradio is the [ui] extra: say how to install it instead of an ImportError."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError(f"the playground needs Gradio, which is not installed; {UI_PIP}") from None


def check_port(port: int, host: str = HOST) -> None:
    """Refuse a port something already listens on (uvicorn binds with SO_REUSEADDR too, so this is its test)."""
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port}: not a TCP port; use 1024-65535 (default {DEFAULT_PORT})")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise RunError(
                f"port {port} on {host} is in use ({err.strerror}); pass another one, e.g. --port {port + 1}"
            ) from None


def finished_run(path: str | os.PathLike) -> RunDir:
    """A folder that `unsloth-sft train` finished (config.yaml, metrics.json, an adapter or merged model)."""
    run = RunDir(path)
    if not run.path.is_dir():
        raise RunError(f"{run}: no such folder; pass a run folder that `unsloth-sft train` made (runs/NAME)")
    if not run.config_file.is_file():
        raise RunError(f"{run}: no config.yaml, so not a run folder; pass the folder `unsloth-sft train` made")
    if not run.is_finished:
        raise RunError(
            f"{run}: not a finished run (no {run.metrics_file.name}); finish training first (the same "
            "`unsloth-sft train` command resumes from its last checkpoint), then start the playground"
        )
    if run.kind is None:
        raise RunError(f"{run}: no adapter/ or merged/ model in this run folder; train first (unsloth-sft train)")
    return run


def example_pairs(cfg: RunConfig, task: str) -> tuple[list[tuple[str, str]], str]:
    """(input, reference) pairs of the run's examples (`pick_examples`: the test split, else training), and which
    split that was. The input is what a user would type: the task's own framing is added when the page renders it."""
    from unsloth_sft import tasks
    from unsloth_sft.data.columns import resolve_columns
    from unsloth_sft.data.examples import load_examples, pick_examples
    from unsloth_sft.data.prompts import TEXT_PROMPT_CHARS

    try:
        picked = pick_examples(load_examples(cfg), MAX_EXAMPLES)
    except DataError:  # the data is not here (a Hub dataset offline): the page still works, with empty boxes
        return [], "none (the run's data is not available here)"
    where = f"{'test' if picked.split == 'test' else 'training'} split"
    record = tasks.get(task)
    pairs: list[tuple[str, str]] = []
    if record.shape == "messages":
        for conv in picked.conversations:
            user = next((m["content"] for m in conv if m["role"] == "user"), "")
            reply = next((m["content"] for m in conv if m["role"] == "assistant"), "")
            pairs.append((user, reply))
        return pairs, where
    if record.shape == "blocks":
        end = TEXT_PROMPT_CHARS + REFERENCE_CHARS
        return [(text[:TEXT_PROMPT_CHARS], text[TEXT_PROMPT_CHARS:end]) for text in picked.texts], where
    for row, at in zip(picked.rows.rows, picked.rows.where):
        cols = resolve_columns(list(row), cfg.data, task, at)
        # the input fields, blank-line separated (an instruction and its input, as to_messages joins them)
        given = [str(row.get(cols[f]) or "") for f in record.all_fields if f != record.answer and f in cols]
        pairs.append(("\n\n".join(g for g in given if g.strip()), str(row.get(cols[record.answer]) or "")))
    return [p for p in pairs if p[0].strip()], where


def render_input(cfg: RunConfig, task: str, tokenizer, value: str | list[dict]) -> str:
    """The exact text the model continues: a string (the task's input) or a conversation, in the run's template."""
    from unsloth_sft.evaluation.infer import prompt_text

    given = {"messages": value} if isinstance(value, list) else value
    return prompt_text(given, cfg, task, tokenizer, "the playground's input")


def token_pieces(tokenizer, text: str) -> list[tuple[int, str]]:
    """(id, decoded text) of each token of `text`, tokenized as `generate` does (no special tokens added)."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return [(i, tokenizer.decode([i])) for i in ids]


def generation_config(
    ecfg: EvalConfig, max_new_tokens: int, decoding: str, temperature: float, top_p: float, repetition_penalty: float
) -> EvalConfig:
    """The run's eval settings with the page's choices on top (validated as the config is)."""
    return dataclasses.replace(
        ecfg,
        max_new_tokens=int(max_new_tokens),
        do_sample=decoding == "sample",
        temperature=float(temperature),
        top_p=float(top_p),
        repetition_penalty=float(repetition_penalty),
        batch_size=1,
    )


def _stop_when(event: threading.Event):
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnEvent(StoppingCriteria):
        """Ends generation at the next token once the page's Stop button has been pressed."""

        def __call__(self, input_ids, scores, **kwargs):
            import torch

            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopOnEvent()])


def stream_answer(pg: Playground, prompt: str, ecfg: EvalConfig, base: bool = False) -> Iterator[str]:
    """The answer so far, token by token; the last value is `evaluate.generate`'s text (what `infer` writes)."""
    from transformers import TextIteratorStreamer

    from unsloth_sft.evaluation.generate import generate

    streamer = TextIteratorStreamer(pg.tokenizer, skip_prompt=True, skip_special_tokens=True)
    done: dict[str, Any] = {}

    def work() -> None:
        try:
            if ecfg.do_sample:  # the same seed for base and tuned: a difference is the adapter's, not the dice's
                from transformers import set_seed

                set_seed(pg.cfg.train.seed)
            switch = pg.model.disable_adapter() if base else contextlib.nullcontext()
            with switch:
                done["text"] = generate(
                    pg.model,
                    pg.tokenizer,
                    [prompt],
                    ecfg,
                    progress=False,
                    streamer=streamer,
                    stopping_criteria=_stop_when(pg.stop),
                )[0]
        except BaseException as err:  # handed to the page's thread below
            done["error"] = err
            streamer.end()  # wakes the reader, which then raises it

    thread = threading.Thread(target=work, daemon=True, name="playground-generate")
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text
    thread.join()
    if "error" in done:
        raise done["error"]
    yield done["text"]


def load_playground(path: str | os.PathLike) -> Playground:
    """A finished run's model, in memory once: the base with the adapter on top (or merged/ when it has none)."""
    from unsloth_sft.evaluation.infer import run_task
    from unsloth_sft.models.load import load_run_model

    run = finished_run(path)
    cfg = run.config()
    task = run_task(run, cfg)
    model, tokenizer = load_run_model(run, prefer="adapter")  # as eval: disable_adapter() gives the base
    examples, where = example_pairs(cfg, task)
    return Playground(run, cfg, task, model, tokenizer, run.model("adapter").base_switchable, examples, where)


def report_markdown(run: RunDir) -> str:
    """The Report tab: training in one line, then the eval table base -> tuned (or how to make one)."""
    from unsloth_sft.evaluation.report import metrics_table

    m = run.metrics() or {}
    first, last = m.get("first_loss"), m.get("last_loss")
    loss = f"loss {first:.3f} -> {last:.3f}" if first is not None and last is not None else "no loss logged"
    parts = [f"### Training\n{m.get('steps')} steps in {m.get('runtime_s', 0):.0f} s, {loss} ({run.metrics_file})"]
    ev = run.eval_metrics()
    if ev:
        parts.append(
            f"### Evaluation: base -> tuned\n{ev.get('test_examples')} test examples, {ev.get('task')} task, "
            f"{ev.get('template')} template ({run.eval_dir() / 'report.md'})\n\n{metrics_table(ev['metrics'])}"
        )
    else:
        parts.append(f"### Evaluation\nNot evaluated yet: `unsloth-sft eval --run {run}`, then reload this page.")
    if not run.loss_plot.is_file():
        parts.append("No loss curve in this run (loss.png).")
    return "\n\n".join(parts)
