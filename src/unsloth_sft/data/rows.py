"""Rows -> conversations: each row of a source as one {role, content} conversation in its task's shape; one source's
examples read, split, detected and shaped (no tokenizer needed)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from unsloth_sft import tasks
from unsloth_sft.config.data import DataConfig
from unsloth_sft.config.run import RunConfig
from unsloth_sft.core.errors import DataError
from unsloth_sft.core.progress import Progress
from unsloth_sft.data.columns import check_columns, detect_task, resolve_columns
from unsloth_sft.data.sources import Split, train_test
from unsloth_sft.data.tables import BATCH, View, batch_rows, cached, digest, table
from unsloth_sft.data.tools import attach_tools, check_calls, is_tool_message, tool_message

ROLES = ("system", "user", "assistant")
PROGRESS_ROWS = 10_000  # from this many rows shaping them says how far it is


SHAREGPT_ROLES = {
    "human": "user",
    "gpt": "assistant",
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",  # Hermes' function-calling exports: the tool's output
}


def from_sharegpt(value: list, col: str, where: str) -> list:
    """ShareGPT turns ({from: human|gpt|system, value}) as {role, content}; a new list, the row stays as read.

    TRL's maybe_convert_to_chatml renames the keys but keeps human/gpt, and importing trl here, before the
    pipeline imports unsloth, would cost unsloth's patches; so the rename is these few lines.
    """
    out = []
    for i, m in enumerate(value):
        if isinstance(m, dict) and "from" in m:
            if m["from"] not in SHAREGPT_ROLES:
                raise DataError(
                    f"{where}: {col}[{i}].from '{m['from']}' is not one of {', '.join(SHAREGPT_ROLES)}; "
                    "fix or drop the turn"
                )
            rest = {k: v for k, v in m.items() if k not in ("from", "value")}  # tool_calls, name, tool_call_id
            m = {**rest, "role": SHAREGPT_ROLES[m["from"]], **({"content": m["value"]} if "value" in m else {})}
        out.append(m)
    return out


def _check_messages(value: Any, where: str, col: str = "messages") -> list[dict]:
    if not isinstance(value, list) or not value:
        raise DataError(
            f"{where}: '{col}' must be a non-empty list of {{role, content}} (or ShareGPT {{from, value}}), "
            f"got {type(value).__name__}"
        )
    if any(isinstance(m, dict) and "from" in m for m in value):
        value = from_sharegpt(value, col, where)
    out = []
    for i, m in enumerate(value):
        if is_tool_message(m):  # assistant tool_calls, tool results (data/tools.py)
            out.append(tool_message(m, where, f"{col}[{i}]"))
            continue
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: {col}[{i}] must be an object with 'role' and 'content' (or 'from' and 'value')")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: {col}[{i}].role '{m['role']}' is not one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise DataError(f"{where}: {col}[{i}].content must be text, got {type(m['content']).__name__}")
        out.append({"role": m["role"], "content": m["content"]})
    check_turn_order(out, where, col)
    check_calls(out, where, col)
    return out


def check_turn_order(messages: list[dict], where: str, col: str = "messages") -> None:
    """A system message comes first or not at all, and the first turn after it is the user's: the rules every chat
    template assumes (Gemma's raises on either), checked here, before a model loads, with the row named."""
    roles = [m["role"] for m in messages]
    late = next((i for i, role in enumerate(roles) if role == "system" and i > 0), None)
    if late is not None:
        raise DataError(
            f"{where}: {col}[{late}] is a system message inside the conversation; a system message comes first: "
            f"move it to {col}[0] or fold its text into the next user turn"
        )
    first = next((i for i, role in enumerate(roles) if role != "system"), None)
    if first is None:
        raise DataError(f"{where}: '{col}' has only a system message; add the user turn and the reply to learn")
    if roles[first] == "assistant":
        raise DataError(
            f"{where}: {col}[{first}] opens the conversation with the assistant; a conversation starts with a user "
            "turn: add the user message it answers, or drop the turn"
        )


def cell_text(row: dict, col: str, where: str) -> str:
    """A row's value in `col` as text (a number reads as its digits, a missing value as ""); anything else refused."""
    value = row.get(col)
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: column '{col}' must be text, got {type(value).__name__}")
    return str(value)


def to_messages(
    row: dict, task: str, cols: dict[str, str], cfg: DataConfig, where: str, require_answer: bool = True
) -> list[dict] | None:
    """One row as a conversation; None when its answer is empty (the caller skips and counts it).

    With require_answer=False (inference) the conversation ends before the answer instead.
    """
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with named fields, got {type(row).__name__}")
    record = tasks.get(task)
    missing = [c for f, c in cols.items() if c not in row and f not in record.optional]
    if missing:
        raise DataError(f"{where}: missing field '{missing[0]}'; fields here: {', '.join(map(str, row))}")
    if record.shape == "messages":
        messages = _check_messages(row[cols[record.fields[0]]], where, cols[record.fields[0]])
        if "tools" in cols:  # the row's tool schemas (chat's optional field)
            messages = attach_tools(messages, row.get(cols["tools"]), where, cols["tools"])
        if require_answer and not any(
            m["role"] == "assistant" and (m["content"].strip() or m.get("tool_calls")) for m in messages
        ):
            return None
    else:
        answer = cell_text(row, cols[record.answer], where) if record.answer in cols else ""
        if require_answer and not answer.strip():
            return None
        values = {f: cell_text(row, c, where) for f, c in cols.items() if f != record.answer}
        messages = [{"role": "user", "content": record.prompt(values, cfg)}]
        if answer.strip():
            messages.append({"role": "assistant", "content": answer})
    if cfg.system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": cfg.system_prompt}, *messages]
    return messages


def conversation_features():
    """The Arrow schema of shaped conversations: each as JSON text (any message shape, tool calls included, keeps its
    keys and types exactly) and where its row came from."""
    import datasets

    return datasets.Features({"_messages": datasets.Value("string"), "_where": datasets.Value("string")})


def conversation_view(ds, key: str = "") -> View:
    """The conversations of a shaped table (columns _messages, _where) as a sequence read a batch at a time."""
    view = View(ds, lambda b: [json.loads(text) for text in b["_messages"]])
    view.key = key
    return view


def where_view(ds) -> View:
    return View(ds, lambda b: b["_where"])


def _shape(batch: dict, task: str, cols: dict, cfg: DataConfig, name, state: dict) -> dict:
    """One batch of rows -> its conversations (rows with an empty answer skipped and counted)."""
    wheres = batch["_where"] if name is None else [name(n) for n in batch["_n"]]
    out: dict[str, list] = {"_messages": [], "_where": []}
    for row, where in zip(batch_rows(batch), wheres):
        messages = to_messages(row, task, cols, cfg, where)
        if messages is None:
            if not cfg.skip_empty:
                raise DataError(f"{where}: the answer is empty; fill it in or set data.skip_empty: true")
            state["skipped"] += 1
        else:
            out["_messages"].append(json.dumps(messages, ensure_ascii=False))
            out["_where"].append(where)
    state["bar"].update(len(wheres))
    return out


def conversations(
    split: Split, task: str, cfg: DataConfig, wheres: list[str] | None = None
) -> tuple[Sequence[list[dict]], int]:
    """All rows of a split as conversations, and how many were skipped for an empty answer; `wheres`, when given,
    gets each kept conversation's file and line (for errors the tokenizer's template raises later).

    The rows are shaped by datasets' `map` a batch at a time into an Arrow table in the data cache, keyed on the
    rows and the settings: the conversations come back as a view of it (`.ds` with _messages and _where).
    """
    if not len(split.rows):
        return [], 0
    first = split.rows[0]
    columns = list(first) if isinstance(first, dict) else []
    cols = resolve_columns(columns, cfg, task, split.where[0].rsplit(" ", 2)[0])
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("sources", "cache_tokenized")}
    key = digest("conversations", split.key, split.where[0], task, cols, settings)

    def build(tmp) -> dict:
        state = {"skipped": 0}
        with Progress(len(split.rows), "shape", unit="row", enabled=len(split.rows) >= PROGRESS_ROWS) as bar:
            state["bar"] = bar
            shaped = split.ds.map(
                _shape,
                fn_kwargs={"task": task, "cols": cols, "cfg": cfg, "name": split.name, "state": state},
                batched=True,
                batch_size=BATCH,
                writer_batch_size=BATCH,
                remove_columns=split.ds.column_names,
                features=conversation_features(),
                cache_file_name=str(tmp / "0.arrow"),
                load_from_cache_file=False,
                new_fingerprint=key,
            )
        return {"skipped": state["skipped"], "examples": len(shaped)}

    folder, meta = cached("conversations", key, build)
    ds = table(folder / "0.arrow")
    if wheres is not None:
        wheres.extend(where_view(ds))
    return conversation_view(ds, key), meta["skipped"]


@dataclass
class Examples:
    """A source read and shaped, not yet tokenized: every data error shows up here, before a model loads."""

    task: str
    train: Split
    test: Split | None
    train_conversations: Sequence[list[dict]] = field(default_factory=list)  # a view of an Arrow table
    test_conversations: Sequence[list[dict]] = field(default_factory=list)
    skipped: int = 0
    text_column: str | None = None  # raw text only
    mix: list[dict] = field(default_factory=list)  # data.sources: per source its task, examples, share (mix.py)
    sources: list | None = None  # data.sources with each task resolved (saved in config.yaml)
    train_where: Sequence[str] = field(default_factory=list)  # file and line of each training conversation
    test_where: Sequence[str] = field(default_factory=list)
    stream: dict | None = None  # data.streaming: the training rows as a datasets IterableDataset (data/stream.py)


def split_task(train: Split, d: DataConfig) -> tuple[dict, str, str]:
    """A split's first row (an object, or one line naming where it is not), the file it came from, and its task."""
    first = train.rows[0]
    if not isinstance(first, dict):
        raise DataError(f"{train.where[0]}: expected an object with named fields, got {type(first).__name__}")
    origin = train.where[0].rsplit(" ", 2)[0]
    return first, origin, detect_task(list(first), d, origin, rows=train.rows)


def source_examples(cfg: RunConfig) -> Examples:
    """One source (data.source) read, split, its task detected, its rows turned into conversations."""
    d = cfg.data
    check_columns(d)
    train, test = train_test(d, cfg.train.seed, cfg.eval.max_samples)  # a carve no bigger than eval scores
    first, origin, task = split_task(train, d)
    if tasks.get(task).shape == "blocks":
        col = resolve_columns(list(first), d, task, origin)[tasks.get(task).fields[0]]
        for row, where in zip(train.rows, train.where):
            cell_text(row, col, where)
        return Examples(task, train, test, text_column=col)
    train_convs, skipped = conversations(train, task, d)
    if not train_convs:
        raise DataError(
            f"{d.source}: every training row was skipped ({skipped} with an empty answer); check data.columns"
        )
    test_convs: Sequence[list[dict]] = []
    if test is not None and len(test.rows):
        test_convs, test_skipped = conversations(test, task, d)
        skipped += test_skipped
    return Examples(
        task,
        train,
        test,
        train_convs,
        test_convs,
        skipped,
        train_where=wheres(train_convs),
        test_where=wheres(test_convs),
    )


def wheres(convs: Sequence) -> Sequence[str]:
    """Where each conversation of a view came from (a view too); none for a list."""
    return where_view(convs.ds) if isinstance(convs, View) else []
