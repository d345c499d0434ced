"""Tasks as data: one record per task says everything the pipeline knows about it.

A record holds the task's fields and the column names that fill them, how a row becomes a training example
(one user turn and its answer, a `messages` conversation, or raw text cut into blocks), the template it renders
with, what the loss covers, which metrics `eval` reports, what an `infer` input line may be, and the language
and tags of its model card. Data, prompts, eval, infer, reports and export read the record; none of them
names a task. Adding a task is one `register(Task(...))` in `tasks/builtin.py`, or `unsloth_sft.register_task`
from a notebook (docs/extending.md).

The task of a run is resolved once, when training starts (`data.task: auto` is detected from the columns),
and saved in the run's config.yaml; eval and infer read it from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Shape = Literal["turn", "messages", "blocks"]
Fields = dict[str, str]  # a row's text per field, e.g. {"dialogue": "...", "summary": "..."}
Metric = Callable[[list[str], list[str]], dict[str, float]]  # (predictions, references) -> scores
DataSection = Any  # config.DataConfig (data.instruction, ...); config imports this module, not the other way round


def first_field(task: Task) -> Callable[[Fields, DataSection], str]:
    """The default prompt of a one-turn task: the text of its first field, as it is."""
    return lambda values, cfg: values[task.fields[0]]


@dataclass(frozen=True, eq=False)
class Task:
    """What the pipeline knows about one task. Only `name` and `fields` are required."""

    name: str  # the data.task value
    fields: tuple[str, ...]  # required fields, input first (the answer among them); messages / blocks: the column
    answer: str | None = None  # the field the model learns to write (the reference in eval); None: messages / blocks
    optional: tuple[str, ...] = ()  # fields a row may leave out (instruction's "input")
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # other column names per field (any case)
    # auto-detection: lower is tried first; None: only by data.task. `looks_like(rows, columns)` (optional) also
    # has to hold, e.g. GSM8K: question/answer rows whose answers end in "#### N".
    detect: int | None = None
    looks_like: Callable[[list[dict], dict[str, str]], bool] | None = None
    shape: Shape = "turn"  # turn: one user message from `prompt`, then the answer; messages: a conversation; blocks
    prompt: Callable[[Fields, DataSection], str] | None = None  # the user message of a turn; None: the first field
    template: str = "chat"  # data.template auto: chat (the tokenizer's chat template), qa, alpaca, plain
    fallback: str = "alpaca"  # the template when `template` is chat and the tokenizer has no chat template
    loss: str = "the answer + EOS"  # what the loss covers (the spans prompts.render marks)
    metrics: Metric | None = None  # scores of generated answers in eval; None: no generation, perplexity instead
    headline: str = "eval_loss"  # the one metric the run summary shows
    infer_line: str = ""  # what one line of `unsloth-sft infer --input` may be, besides the dataset's own columns
    input_label: str = "Input"  # the playground's label for its input box (`unsloth-sft chat`)
    language: tuple[str, ...] = ("en",)  # model card languages unless data.language says
    tags: tuple[str, ...] = ()  # model card tags besides unsloth, trl, sft (and lora)

    def __post_init__(self):
        if not self.fields:
            raise ValueError(f"task {self.name}: give at least one field")
        if self.shape == "turn" and self.answer not in self.fields:
            raise ValueError(f"task {self.name}: a turn task needs its answer field among its fields")
        if self.prompt is None and self.shape == "turn":
            object.__setattr__(self, "prompt", first_field(self))

    @property
    def all_fields(self) -> tuple[str, ...]:
        return self.fields + self.optional

    def needed(self, answer: bool = True) -> tuple[str, ...]:
        """The fields a row must have; without the answer for inference inputs (answer=False)."""
        return tuple(f for f in self.fields if answer or f != self.answer)


TASKS: dict[str, Task] = {}  # name -> record, in the order data.task lists them


def register(task: Task) -> Task:
    """Add (or replace) a task: data.task accepts its name, auto-detection tries it, eval scores it."""
    TASKS[task.name] = task
    return task


def names() -> tuple[str, ...]:
    return tuple(TASKS)


def get(name: str) -> Task:
    """The record of a task name (data.task, or the task a run saved)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[name]


def detection_order() -> list[Task]:
    return sorted((t for t in TASKS.values() if t.detect is not None), key=lambda t: t.detect)


def fields() -> list[str]:
    """Every field of every task, sorted: the keys data.columns may map."""
    return sorted({f for task in TASKS.values() for f in task.all_fields})


def aliases(name: str) -> tuple[str, ...]:
    """The other column names a field is found under, across the tasks that have it."""
    out: list[str] = []
    for task in TASKS.values():
        out += [a for a in task.aliases.get(name, ()) if a not in out]
    return tuple(out)


def card_language(task: str | None, language: list[str] | None) -> list[str]:
    """The model card's languages: data.language when set, else the task's."""
    if language:
        return list(language)
    return list(TASKS[task].language) if task in TASKS else ["en"]
