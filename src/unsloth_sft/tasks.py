"""Tasks as data: one record per task says everything the pipeline knows about it.

A record holds the task's fields and the column names that fill them, how a row becomes a training example
(one user turn and its answer, a `messages` conversation, or raw text cut into blocks), the template it renders
with, what the loss covers, which metrics `eval` reports, what an `infer` input line may be, and the language
and tags of its model card. Data, prompts, eval, infer, reports and export read the record; none of them
names a task. Adding a task is one `register(Task(...))` (see the README's "Extending: add a task").

The task of a run is resolved once, when training starts (`data.task: auto` is detected from the columns),
and saved in the run's config.yaml; eval and infer read it from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from unsloth_sft import metrics

Shape = Literal["turn", "messages", "blocks"]
Fields = dict[str, str]  # a row's text per field, e.g. {"dialogue": "...", "summary": "..."}
Metric = Callable[[list[str], list[str]], dict[str, float]]  # (predictions, references) -> scores
DataSection = Any  # config.DataConfig (data.instruction, ...); config imports this module, not the other way round

DEFAULT_INSTRUCTION = "निम्नलिखित बातचीत का एक वाक्य में सारांश लिखें। (Summarize the following conversation in one sentence.)"


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


def text_metrics(predictions: list[str], references: list[str], task: str) -> dict[str, float]:
    """The scores `eval` reports for a task's generated answers."""
    record = TASKS.get(task)
    if record is None or record.metrics is None:
        valid = sorted(t.name for t in TASKS.values() if t.metrics is not None)
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(valid)}")
    return record.metrics(predictions, references)


def card_language(task: str | None, language: list[str] | None) -> list[str]:
    """The model card's languages: data.language when set, else the task's."""
    if language:
        return list(language)
    return list(TASKS[task].language) if task in TASKS else ["en"]


def looks_like_gsm8k(rows: list[dict], columns: dict[str, str]) -> bool:
    """question/answer rows whose answers end in '#### N' are GSM8K-style math (scored by exact match)."""
    sample = [str(r.get(columns["answer"], "")) for r in rows[:20] if isinstance(r, dict)]
    return bool(sample) and all("####" in a for a in sample)


def summarization_prompt(values: Fields, cfg: DataSection) -> str:
    return f"{cfg.instruction or DEFAULT_INSTRUCTION}\n\n{values['dialogue']}"


def instruction_prompt(values: Fields, cfg: DataSection) -> str:
    extra = values.get("input", "")
    return values["instruction"] + (f"\n\n{extra}" if extra.strip() else "")


QUESTION_ALIASES = {"question": ("प्रश्न", "सवाल"), "answer": ("उत्तर", "जवाब")}

register(
    Task(
        "summarization",
        fields=("dialogue", "summary"),
        answer="summary",
        aliases={
            "dialogue": ("dialog", "conversation", "transcript", "संवाद", "वार्तालाप", "बातचीत", "डायलॉग"),
            "summary": ("abstract", "सारांश", "सार", "संक्षेप", "संक्षिप्त", "समरी"),
        },
        detect=20,
        prompt=summarization_prompt,
        loss="the summary + end of turn",
        metrics=metrics.free_text,
        headline="rougeL",
        infer_line='a dialogue: "#Person1#: ...\\n#Person2#: ...", or {"dialogue": "..."}',
        input_label="Dialogue",
        language=("hi", "en"),  # the default instruction is Hindi and English
        tags=("summarization",),
    )
)
register(
    Task(
        "gsm8k",
        fields=("question", "answer"),
        answer="answer",
        aliases=QUESTION_ALIASES,
        detect=45,  # before qa: the same columns, told apart by the answers
        looks_like=looks_like_gsm8k,
        fallback="qa",
        loss="the worked answer + end of turn",
        metrics=metrics.gsm8k_exact_match,
        headline="exact_match",
        infer_line='a question: "Tom has 3 apples ...", or {"question": "..."}',
        input_label="Question",
        tags=("math",),
    )
)
register(
    Task(
        "qa",
        fields=("question", "answer"),
        answer="answer",
        aliases=QUESTION_ALIASES,
        detect=50,
        template="qa",
        metrics=metrics.free_text,
        headline="rougeL",
        infer_line='a question: "What is ...?", or {"question": "..."}',
        input_label="Question",
        tags=("question-answering",),
    )
)
register(
    Task(
        "chat",
        fields=("messages",),
        aliases={"messages": ("conversations",)},  # ShareGPT rows: [{from: human|gpt|system, value}] (data.py)
        detect=10,
        shape="messages",
        loss="every assistant turn (or the last: data.last_turn_only)",
        metrics=metrics.free_text,
        headline="chrf++",
        infer_line='a user message: "hi", or {"messages": [{"role": "user", "content": "hi"}]}',
        input_label="Your message",
        tags=("conversational",),
    )
)
register(
    Task(
        "instruction",
        fields=("instruction", "output"),
        answer="output",
        optional=("input",),
        detect=30,
        prompt=instruction_prompt,
        template="alpaca",
        metrics=metrics.free_text,
        headline="rougeL",
        infer_line='an instruction: "Name three colours", or {"instruction": "...", "input": "..."}',
        input_label="Instruction",
        tags=("alpaca",),
    )
)
register(
    Task(
        "completion",
        fields=("prompt", "completion"),
        answer="completion",
        detect=40,
        template="plain",
        loss="the completion + EOS",
        metrics=metrics.free_text,
        headline="rougeL",
        infer_line='a prompt: "Once upon", or {"prompt": "..."}',
        input_label="Prompt",
    )
)
register(
    Task(
        "text",
        fields=("text",),
        detect=60,
        shape="blocks",
        template="none",
        loss="every token (blocks of data.block_size tokens)",
        headline="perplexity",
        infer_line='the text to continue: "Once upon a time", or {"text": "..."}',
        input_label="Text to continue",
    )
)
