"""Conversations -> token ids whose labels mask the prompt (-100); raw text -> blocks; the tokenized cache."""

from __future__ import annotations

import json
from pathlib import Path

from unsloth_sft.config.data import DataConfig
from unsloth_sft.core.errors import DataError
from unsloth_sft.core.progress import Progress, progress
from unsloth_sft.data.prompts import render
from unsloth_sft.models.tokens import adds_bos

PROGRESS_ROWS = 10_000  # from this many conversations (or documents) tokenizing says how far it is: tens of seconds
CHUNK = 1_000  # conversations rendered and tokenized together: one batched tokenizer call, one progress step


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


def tokenize(
    tokenizer, convs: list[list[dict]], template: str, cfg: DataConfig, max_len: int, wheres: list[str] | None = None
) -> tuple[dict, int]:
    """input_ids and labels for each conversation (prompt tokens -100), and how many were cut at max_len.

    Each piece between span edges is tokenized on its own, so no token straddles prompt and answer, and the
    prompt's tokens are exactly those of the inference prompt (which ends where the answer starts). A template
    that refuses a conversation names its file and line (`wheres`, one per conversation).
    """
    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    truncated = 0
    with Progress(len(convs), "tokenize", unit="conversation", enabled=len(convs) >= PROGRESS_ROWS) as bar:
        for start in range(0, len(convs), CHUNK):
            chunk = convs[start : start + CHUNK]
            truncated += _tokenize_chunk(tokenizer, chunk, template, cfg, max_len, wheres, start, input_ids, labels)
            bar.update(len(chunk))
    return {"input_ids": input_ids, "labels": labels}, truncated


def _tokenize_chunk(tokenizer, convs, template, cfg, max_len, wheres, first, input_ids, labels) -> int:
    """tokenize() for the conversations from index `first`: appends their rows, returns how many were cut."""
    rendered = []
    for i, conv in enumerate(convs, first):
        try:
            rendered.append(render(tokenizer, conv, template, cfg.last_turn_only))
        except DataError as err:
            where = wheres[i] if wheres and i < len(wheres) else f"conversation {i + 1}"
            raise DataError(f"{where}: {err}") from None
    pieces = [_segments(r) for r in rendered]
    flat = [text for p in pieces for text, _ in p]
    encoded = iter(tokenizer(flat, add_special_tokens=False)["input_ids"]) if flat else iter(())
    truncated = 0
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
    return truncated


def _tokenize_batch(batch: dict, tokenizer, template: str, cfg: DataConfig, max_len: int, state: dict) -> dict:
    """One batch of shaped conversations (JSON text) -> input_ids and labels; counts what was cut and what trains."""
    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    convs = [json.loads(text) for text in batch["_messages"]]
    state["truncated"] += _tokenize_chunk(
        tokenizer, convs, template, cfg, max_len, batch["_where"], 0, input_ids, labels
    )
    state["trainable"] += sum(any(x != -100 for x in lab) for lab in labels)
    state["bar"].update(len(convs))
    return {"input_ids": input_ids, "labels": labels}


def token_features():
    import datasets

    ids = datasets.List(datasets.Value("int32"))  # half of int64's disk and page cache; the collator makes tensors
    return datasets.Features({"input_ids": ids, "labels": ids})


def _shaped(convs, wheres) -> tuple[object, str]:
    """A table of conversations (_messages, _where) and its content key: the view's own, or one built from a list."""
    import datasets

    from unsloth_sft.data.tables import digest

    if getattr(convs, "ds", None) is not None and "_messages" in convs.ds.column_names:
        return convs.ds, getattr(convs, "key", "") or convs.ds._fingerprint
    texts = [json.dumps(c, ensure_ascii=False) for c in convs]
    where = [wheres[i] if wheres and i < len(wheres) else f"conversation {i + 1}" for i in range(len(texts))]
    return datasets.Dataset.from_dict({"_messages": texts, "_where": where}), digest(texts, where)


def tokenize_cached(
    tokenizer, convs, template: str, cfg: DataConfig, max_len: int, wheres=None
) -> tuple[object, int, int]:
    """Conversations tokenized by datasets' `map` a batch at a time into an Arrow table (prompt tokens -100):
    (the table, how many were cut at max_len, how many have a token to train on).

    Cached on disk (~/.cache/unsloth_sft/tokenized) keyed on what decides the tokens: the tokenizer's vocabulary
    and merges, the chat template, the masking settings, max_len and the conversations' content key; a second run
    memory-maps the table instead of tokenizing (bench/data_scale.py). data.cache_tokenized false keeps it in memory.
    """
    import hashlib

    from unsloth_sft.data.tables import BATCH, cached, table, write_rows

    ds, key = _shaped(convs, wheres)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h = hashlib.sha256(backend.to_str().encode() if backend is not None else repr(tokenizer.get_vocab()).encode())
    settings = [template, max_len, cfg.train_on_completions_only, cfg.last_turn_only, tokenizer.chat_template, key]
    h.update(json.dumps(settings, ensure_ascii=False, sort_keys=True).encode())

    def run(cache_file: str | None):
        state = {"truncated": 0, "trainable": 0}
        if not len(ds) and cache_file is not None:  # datasets' map writes no file for no rows
            write_rows(Path(cache_file), iter(()), token_features())
            return None, {"truncated": 0, "trainable": 0, "examples": 0}
        with Progress(len(ds), "tokenize", unit="conversation", enabled=len(ds) >= PROGRESS_ROWS) as bar:
            state["bar"] = bar
            out = ds.map(
                _tokenize_batch,
                fn_kwargs={
                    "tokenizer": tokenizer,
                    "template": template,
                    "cfg": cfg,
                    "max_len": max_len,
                    "state": state,
                },
                batched=True,
                batch_size=CHUNK,
                writer_batch_size=BATCH,
                remove_columns=ds.column_names,
                features=token_features(),
                keep_in_memory=cache_file is None,
                cache_file_name=cache_file,
                load_from_cache_file=False,
                new_fingerprint=h.hexdigest()[:24],
            )
        return out, {"truncated": state["truncated"], "trainable": state["trainable"], "examples": len(out)}

    if not cfg.cache_tokenized:
        out, meta = run(None)
        return out, meta["truncated"], meta["trainable"]
    folder, meta = cached("tokenized", h.hexdigest()[:24], lambda tmp: run(str(tmp / "rows.arrow"))[1])
    return table(folder / "rows.arrow"), meta["truncated"], meta["trainable"]


def text_blocks(tokenizer, texts: list[str], block_size: int) -> dict:
    """Raw text: tokenize everything, EOS between documents, cut into full blocks; the loss covers every token."""
    ids: list[int] = []
    bos = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []  # the BOS rule (models.tokens), as prompts
    for text in progress(texts, desc="tokenize", unit="document", enabled=len(texts) >= PROGRESS_ROWS):
        ids.extend(bos + tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    blocks = [ids[i : i + block_size] for i in range(0, len(ids) - block_size + 1, block_size)]
    if not blocks:
        raise DataError(f"the text has {len(ids)} tokens, fewer than data.block_size {block_size}; lower block_size")
    return {"input_ids": blocks, "labels": [list(b) for b in blocks]}
