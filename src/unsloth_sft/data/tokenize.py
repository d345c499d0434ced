"""Conversations -> token ids whose labels mask the prompt (-100); raw text -> blocks; the tokenized cache."""

from __future__ import annotations

import json

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


def tokenize_cached(
    tokenizer, convs: list[list[dict]], template: str, cfg: DataConfig, max_len: int, wheres: list[str] | None = None
):
    """tokenize(), as a datasets.Dataset, reused from the cache when tokenizer, template, settings and data match.

    Keyed on what decides the tokens: the tokenizer's vocabulary and merges, the chat template, the
    masking settings, max_len and the conversations themselves (20k examples: ~21 s -> ~0.4 s, bench/).
    """
    import hashlib

    import datasets

    from unsloth_sft.core.files import atomic_dir, remove_leftovers
    from unsloth_sft.core.paths import cache_root
    from unsloth_sft.core.quiet import no_progress_bars

    if not cfg.cache_tokenized:
        tokens, truncated = tokenize(tokenizer, convs, template, cfg, max_len, wheres)
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
    tokens, truncated = tokenize(tokenizer, convs, template, cfg, max_len, wheres)
    ds = datasets.Dataset.from_dict(tokens)
    for note in remove_leftovers(folder.parent):  # a cache write a kill interrupted
        print(note)
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
    bos = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []  # the BOS rule (models.tokens), as prompts
    for text in progress(texts, desc="tokenize", unit="document", enabled=len(texts) >= PROGRESS_ROWS):
        ids.extend(bos + tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    blocks = [ids[i : i + block_size] for i in range(0, len(ids) - block_size + 1, block_size)]
    if not blocks:
        raise DataError(f"the text has {len(ids)} tokens, fewer than data.block_size {block_size}; lower block_size")
    return {"input_ids": blocks, "labels": [list(b) for b in blocks]}
