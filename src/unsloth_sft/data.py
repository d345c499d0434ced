"""Data: a source -> rows -> one conversation shape -> tokenized rows whose labels mask the prompt (-100)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from unsloth_sft import tasks
from unsloth_sft.columns import check_columns, detect_task, resolve_columns
from unsloth_sft.config import DataConfig, RunConfig
from unsloth_sft.errors import DataError
from unsloth_sft.prompts import has_chat_template, render, render_prompt
from unsloth_sft.sources import SUFFIXES, Split, read_source, sample_names, train_test  # noqa: F401  (re-exported)

ROLES = ("system", "user", "assistant")
MIN_TRAIN_BLOCKS = 8  # raw text: fewer training blocks than one default batch (2 x 4) is not a fine-tune


@dataclass
class PreparedData:
    task: str
    template: str
    train: Any  # datasets.Dataset with input_ids, labels
    test: Any | None
    train_conversations: list[list[dict]] = field(default_factory=list)
    test_conversations: list[list[dict]] = field(default_factory=list)
    skipped: int = 0  # rows with an empty answer, skipped and counted
    truncated: int = 0  # training examples longer than max_seq_length (cut at the end)
    mix: list[dict] = field(default_factory=list)  # data.sources: each source's task, examples and share


# ---------------------------------------------------------------- rows -> conversations


SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}


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
            m = {"role": SHAREGPT_ROLES[m["from"]], **({"content": m["value"]} if "value" in m else {})}
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
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: {col}[{i}] must be an object with 'role' and 'content' (or 'from' and 'value')")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: {col}[{i}].role '{m['role']}' is not one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise DataError(f"{where}: {col}[{i}].content must be text, got {type(m['content']).__name__}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _text(row: dict, col: str, where: str) -> str:
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
        if require_answer and not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            return None
    else:
        answer = _text(row, cols[record.answer], where) if record.answer in cols else ""
        if require_answer and not answer.strip():
            return None
        values = {f: _text(row, c, where) for f, c in cols.items() if f != record.answer}
        messages = [{"role": "user", "content": record.prompt(values, cfg)}]
        if answer.strip():
            messages.append({"role": "assistant", "content": answer})
    if cfg.system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": cfg.system_prompt}, *messages]
    return messages


def choose_template(task: str, cfg: DataConfig, tokenizer) -> str:
    """data.template, or the task's natural one: the chat template where the tokenizer has one."""
    if cfg.template != "auto":
        if cfg.template == "chat" and not has_chat_template(tokenizer):
            raise DataError("data.template is chat but the tokenizer has no chat template; use qa, alpaca or plain")
        return cfg.template
    record = tasks.get(task)
    if record.template != "chat":
        return record.template
    return "chat" if has_chat_template(tokenizer) else record.fallback


def conversations(split: Split, task: str, cfg: DataConfig) -> tuple[list[list[dict]], int]:
    """All rows of a split as conversations, and how many were skipped for an empty answer."""
    if not split.rows:
        return [], 0
    columns = list(split.rows[0]) if isinstance(split.rows[0], dict) else []
    cols = resolve_columns(columns, cfg, task, split.where[0].rsplit(" ", 2)[0])
    out, skipped = [], 0
    for row, where in zip(split.rows, split.where):
        messages = to_messages(row, task, cols, cfg, where)
        if messages is None:
            if not cfg.skip_empty:
                raise DataError(f"{where}: the answer is empty; fill it in or set data.skip_empty: true")
            skipped += 1
        else:
            out.append(messages)
    return out, skipped


# ---------------------------------------------------------------- tokenization


def _segments(rendered) -> list[tuple[str, bool]]:
    """The rendered text cut at the span edges: (text, trained) pieces in order."""
    pieces, at = [], 0
    for start, end in rendered.spans:
        if start > at:
            pieces.append((rendered.text[at:start], False))
        pieces.append((rendered.text[start:end], True))
        at = end
    if at < len(rendered.text):
        pieces.append((rendered.text[at:], False))
    return pieces


def tokenize(tokenizer, convs: list[list[dict]], template: str, cfg: DataConfig, max_len: int) -> tuple[dict, int]:
    """input_ids and labels for each conversation (prompt tokens -100), and how many were cut at max_len.

    Each piece between span edges is tokenized on its own, so no token straddles prompt and answer, and the
    prompt's tokens are exactly those of the inference prompt (which ends where the answer starts).
    """
    rendered = [render(tokenizer, c, template, cfg.last_turn_only) for c in convs]
    pieces = [_segments(r) for r in rendered]
    flat = [text for p in pieces for text, _ in p]
    encoded = iter(tokenizer(flat, add_special_tokens=False)["input_ids"]) if flat else iter(())
    input_ids, labels, truncated = [], [], 0
    for p in pieces:
        ids: list[int] = []
        lab: list[int] = []
        for _, trained in p:
            part = next(encoded)
            ids.extend(part)
            lab.extend(part if trained or not cfg.train_on_completions_only else [-100] * len(part))
        if len(ids) > max_len:
            truncated += 1
            ids, lab = ids[:max_len], lab[:max_len]
        input_ids.append(ids)
        labels.append(lab)
    return {"input_ids": input_ids, "labels": labels}, truncated


def tokenize_cached(tokenizer, convs: list[list[dict]], template: str, cfg: DataConfig, max_len: int):
    """tokenize(), as a datasets.Dataset, reused from the cache when tokenizer, template, settings and data match.

    Keyed on what decides the tokens: the tokenizer's vocabulary and merges, the chat template, the
    masking settings, max_len and the conversations themselves (20k examples: ~21 s -> ~0.4 s, bench/).
    """
    import hashlib

    import datasets

    from unsloth_sft.atomic import atomic_dir
    from unsloth_sft.quiet import no_progress_bars
    from unsloth_sft.tiny import cache_root

    if not cfg.cache_tokenized:
        tokens, truncated = tokenize(tokenizer, convs, template, cfg, max_len)
        return datasets.Dataset.from_dict(tokens), truncated
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h = hashlib.sha256(backend.to_str().encode() if backend is not None else repr(tokenizer.get_vocab()).encode())
    settings = [template, max_len, cfg.train_on_completions_only, cfg.last_turn_only, tokenizer.chat_template]
    h.update(json.dumps([settings, convs], ensure_ascii=False, sort_keys=True).encode())
    folder = cache_root() / "tokenized" / h.hexdigest()[:24]
    if (folder / "meta.json").is_file():
        with no_progress_bars(transformers=False):
            ds = datasets.load_from_disk(str(folder / "rows"))
        return ds, json.loads((folder / "meta.json").read_text())["truncated"]
    tokens, truncated = tokenize(tokenizer, convs, template, cfg, max_len)
    ds = datasets.Dataset.from_dict(tokens)
    try:
        with atomic_dir(folder) as tmp, no_progress_bars(transformers=False):  # a cache write is no news
            ds.save_to_disk(str(tmp / "rows"))
            (tmp / "meta.json").write_text(json.dumps({"truncated": truncated, "examples": len(ds)}))
    except OSError:  # a read-only cache only costs the speed-up
        pass
    return ds, truncated


def text_blocks(tokenizer, texts: list[str], block_size: int) -> dict:
    """Raw text: tokenize everything, EOS between documents, cut into full blocks; the loss covers every token."""
    ids: list[int] = []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for text in texts:
        ids.extend(bos + tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    blocks = [ids[i : i + block_size] for i in range(0, len(ids) - block_size + 1, block_size)]
    if not blocks:
        raise DataError(f"the text has {len(ids)} tokens, fewer than data.block_size {block_size}; lower block_size")
    return {"input_ids": blocks, "labels": [list(b) for b in blocks]}


@dataclass
class Examples:
    """A source read and shaped, not yet tokenized: every data error shows up here, before a model loads."""

    task: str
    train: Split
    test: Split | None
    train_conversations: list[list[dict]] = field(default_factory=list)
    test_conversations: list[list[dict]] = field(default_factory=list)
    skipped: int = 0
    text_column: str | None = None  # raw text only
    mix: list[dict] = field(default_factory=list)  # data.sources: per source its task, examples, share (mix.py)
    sources: list | None = None  # data.sources with each task resolved (saved in config.yaml)


def load_examples(cfg: RunConfig) -> Examples:
    """Read the source, split it, detect the task and turn rows into conversations (no tokenizer needed)."""
    d = cfg.data
    if d.sources is not None:
        from unsloth_sft.mix import load_mix

        return load_mix(cfg)
    check_columns(d)
    train, test = train_test(d, cfg.train.seed)
    first = train.rows[0]
    if not isinstance(first, dict):
        raise DataError(f"{train.where[0]}: expected an object with named fields, got {type(first).__name__}")
    origin = train.where[0].rsplit(" ", 2)[0]
    task = detect_task(list(first), d, origin, rows=train.rows)
    if tasks.get(task).shape == "blocks":
        col = resolve_columns(list(first), d, task, origin)[tasks.get(task).fields[0]]
        for row, where in zip(train.rows, train.where):
            _text(row, col, where)
        return Examples(task, train, test, text_column=col)
    train_convs, skipped = conversations(train, task, d)
    if not train_convs:
        raise DataError(
            f"{d.source}: every training row was skipped ({skipped} with an empty answer); check data.columns"
        )
    test_convs: list[list[dict]] = []
    if test is not None and test.rows:
        test_convs, test_skipped = conversations(test, task, d)
        skipped += test_skipped
    return Examples(task, train, test, train_convs, test_convs, skipped)


def has_test(ex: Examples, cfg: RunConfig) -> bool:
    """Whether there is something to test on: test conversations, or raw text's own test split or carve."""
    if tasks.get(ex.task).shape == "blocks":  # blocks are carved after tokenizing
        return bool(ex.test and ex.test.rows) or cfg.data.test_size > 0
    return bool(ex.test_conversations)


def prepare(cfg: RunConfig, tokenizer, examples: Examples | None = None) -> PreparedData:
    """Tokenize a run's train and test data (loading it first unless `examples` are given)."""
    import datasets

    d = cfg.data
    ex = examples or load_examples(cfg)
    max_len = cfg.model.max_seq_length
    if tasks.get(ex.task).shape == "blocks":
        col = ex.text_column
        blocks = text_blocks(tokenizer, [_text(r, col, w) for r, w in zip(ex.train.rows, ex.train.where)], d.block_size)
        ds = datasets.Dataset.from_dict(blocks)
        test_ds = None
        if ex.test is not None and ex.test.rows:
            texts = [_text(r, col, w) for r, w in zip(ex.test.rows, ex.test.where)]
            test_ds = datasets.Dataset.from_dict(text_blocks(tokenizer, texts, d.block_size))
        elif d.test_size > 0 and len(ds) > 1:
            parts = ds.train_test_split(
                test_size=int(d.test_size) if d.test_size >= 1 else d.test_size, seed=cfg.train.seed
            )
            ds, test_ds = parts["train"], parts["test"]
        return PreparedData(ex.task, tasks.get(ex.task).template, ds, test_ds)
    template = choose_template(ex.task, d, tokenizer)
    train_ds, truncated = tokenize_cached(tokenizer, ex.train_conversations, template, d, max_len)
    if not any(any(x != -100 for x in labels) for labels in train_ds["labels"]):
        raise DataError(
            f"model.max_seq_length {max_len} is shorter than every example's prompt, so no answer token is left to "
            "train on; raise model.max_seq_length (`unsloth-sft preview` shows the token counts)"
        )
    test_ds = None
    if ex.test_conversations:
        test_ds = tokenize_cached(tokenizer, ex.test_conversations, template, d, max_len)[0]
    return PreparedData(
        ex.task,
        template,
        train_ds,
        test_ds,
        ex.train_conversations,
        ex.test_conversations,
        ex.skipped,
        truncated,
        ex.mix,
    )


def check_trainable(data: PreparedData, cfg: RunConfig) -> None:
    """Refuse raw text too short to train on once its test blocks are carved (saying how many went where)."""
    if tasks.get(data.task).shape == "blocks" and len(data.train) < MIN_TRAIN_BLOCKS:
        test = len(data.test) if data.test is not None else 0
        raise DataError(
            f"{cfg.data.source}: the text makes {len(data.train) + test} blocks of {cfg.data.block_size} tokens, "
            f"{test} for test and {len(data.train)} to train on (fewer than {MIN_TRAIN_BLOCKS}); give more text, "
            "or lower data.block_size or data.test_size"
        )


def prompt_and_reference(tokenizer, conversation: list[dict], template: str) -> tuple[str, str]:
    """The inference prompt of a test conversation and its reference answer (the final assistant message)."""
    return render_prompt(tokenizer, conversation, template), conversation[-1]["content"]
