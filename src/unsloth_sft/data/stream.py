"""data.streaming: train on a source read as it goes (a datasets IterableDataset), with no preparation and no cache.

The first rows tell the task and give the examples previews show; the test split is the source's own, or the first
rows held out. Training rows are shaped, tokenized and masked a batch at a time while the trainer reads them, with the
same functions as prepared data, so a bad row stops training with its file and line.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unsloth_sft import tasks
from unsloth_sft.config.run import RunConfig
from unsloth_sft.core.errors import ConfigError, DataError
from unsloth_sft.data.columns import check_columns, resolve_columns
from unsloth_sft.data.rows import Examples, conversations, split_task, to_messages, wheres
from unsloth_sft.data.sources import MAX_CARVE, SUFFIXES, Split, json_splits, jsonl_rows, read_path, sample_dir
from unsloth_sft.data.tables import BATCH, batch_rows, digest

HEAD = 64  # rows read up front: the task's detection and the examples previews and checks show
SHUFFLE_BUFFER = 1_000  # rows datasets' IterableDataset.shuffle draws from: a seeded order within each stretch


def check_streaming(cfg: RunConfig) -> None:
    """A stream has no length to count epochs in, and one source to read."""
    if not cfg.data.streaming:
        return
    if cfg.train.max_steps is None:
        raise ConfigError(
            "data.streaming: true needs train.max_steps (a stream has no length to count epochs in); "
            "set it, e.g. --set train.max_steps=1000"
        )
    if cfg.data.sources is not None:
        raise ConfigError("data.streaming reads one data.source; a mix (data.sources) is prepared: unset one of them")


def _file_rows(path: str) -> Iterator[dict]:
    """A local file's rows as {_n, _json}, read as they go (JSON documents and Parquet a batch at a time)."""
    p = Path(path)
    if p.suffix == ".jsonl":
        yield from jsonl_rows(p)
    elif p.suffix == ".json":
        for name, rows in json_splits(p).items():
            if name in ("", "train"):
                yield from ({"_n": i + 1, "_json": json.dumps(r, ensure_ascii=False)} for i, r in enumerate(rows))
    elif p.suffix == ".csv":
        with p.open(encoding="utf-8-sig", newline="") as f:
            for n, row in enumerate(csv.DictReader(f), 2):
                yield {"_n": n, "_json": json.dumps(row, ensure_ascii=False)}
    elif p.suffix == ".parquet":
        import pyarrow.parquet as pq

        n = 0
        for batch in pq.ParquetFile(p).iter_batches(batch_size=BATCH):
            for row in batch.to_pylist():
                n += 1
                yield {"_n": n, "_json": json.dumps(row, ensure_ascii=False, default=str)}
    else:
        raise DataError(f"{p}: data.streaming reads .jsonl, .json, .csv and .parquet files; train {p.suffix} prepared")


def _local(cfg) -> tuple[Any, Any, Split | None] | None:
    """(training stream, its where-namer, the test split) of a local file or folder; None for a Hub id."""
    import datasets

    d = cfg.data
    src = d.source
    path = sample_dir(src.split(":", 1)[1]) if src.startswith("sample:") else Path(src).expanduser()
    if not path.exists():
        return None
    files = {"train": path}
    if path.is_dir():
        files = {
            c.stem: c
            for c in sorted(path.iterdir())
            if c.suffix in SUFFIXES and c.stem in ("train", "test", "validation")
        }
    if d.split not in files:
        raise DataError(f"data.split '{d.split}' not in {src}; splits: {', '.join(files)}")
    test_name = d.test_split or next((s for s in ("test", "validation") if s in files and s != d.split), None)
    if d.test_split and d.test_split not in files:
        raise DataError(f"data.test_split '{d.test_split}' not in {src}; splits: {', '.join(files)}")
    test = read_path(files[test_name])["train"] if test_name else None
    train = files[d.split]
    stream = datasets.IterableDataset.from_generator(_file_rows, gen_kwargs={"path": str(train)})
    kind = "item" if train.suffix == ".json" else "line"
    return stream, (lambda n: f"{train} {kind} {n}"), test


def _hub(cfg) -> tuple[Any, Any, Split | None]:
    import datasets

    d = cfg.data
    try:
        names = datasets.get_dataset_split_names(d.source, d.config_name)
        rows = datasets.load_dataset(d.source, d.config_name, split=d.split, streaming=True)
    except Exception as err:
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise DataError(f"data.source '{d.source}': cannot stream it from the Hugging Face Hub ({reason})") from None
    numbered = rows.map(
        lambda b, idx: {"_n": [i + 1 for i in idx], "_json": [json.dumps(r, default=str) for r in batch_rows(b)]},
        with_indices=True,
        batched=True,
        remove_columns=list(rows.column_names or []),
    ).select_columns(["_n", "_json"])
    test_name = d.test_split or next((s for s in ("test", "validation") if s in names and s != d.split), None)
    test = None
    if test_name:
        head = list(datasets.load_dataset(d.source, d.config_name, split=test_name, streaming=True).take(MAX_CARVE))
        test = _head_split(
            [{"_n": i + 1, "_json": json.dumps(r, default=str)} for i, r in enumerate(head)],
            lambda n: f"{d.source} [{test_name}] row {n}",
        )
    return numbered, (lambda n: f"{d.source} [{d.split}] row {n}"), test


def _head_split(rows: list[dict], name) -> Split:
    import datasets

    return Split.arrow(datasets.Dataset.from_list(rows), name, digest("stream head", rows))


def stream_examples(cfg: RunConfig) -> Examples:
    """The source opened as a stream: the task from its first rows, the test split, the training stream (unshaped)."""
    d = cfg.data
    check_streaming(cfg)
    check_columns(d)
    stream, name, test = _local(cfg) or _hub(cfg)
    held = 0
    if test is None and d.test_size > 0:  # no test split: the first rows are held out (a stream has no length)
        held = int(d.test_size) if d.test_size >= 1 else min(cfg.eval.max_samples or MAX_CARVE, MAX_CARVE)
    opening = list(stream.take(held + HEAD))
    if held and d.test_size < 1 and len(opening) < held + HEAD:  # the whole source is in hand: a fraction of it
        held = math.ceil(d.test_size * len(opening))
    if held:
        test, stream = _head_split(opening[:held], name), stream.skip(held)
    head = opening[held:]
    if d.max_samples is not None:  # the first N training rows of the stream
        stream, head = stream.take(d.max_samples), head[: d.max_samples]
    if not head:
        raise DataError(f"{d.source}: split '{d.split}' has no rows")
    train = _head_split(head, name)
    first, origin, task = split_task(train, d)
    if tasks.get(task).shape == "blocks":
        raise DataError(f"{d.source}: data.streaming trains conversations; raw text ({task}) is prepared: unset it")
    head_convs, skipped = conversations(train, task, d)
    test_convs, test_skipped = conversations(test, task, d) if test is not None else ([], 0)
    cols = resolve_columns(list(first), d, task, origin)
    ex = Examples(task, train, test, head_convs, test_convs, skipped + test_skipped)
    ex.train_where, ex.test_where = wheres(head_convs), wheres(test_convs)
    ex.stream = {"rows": stream.shuffle(seed=cfg.train.seed, buffer_size=SHUFFLE_BUFFER), "name": name, "cols": cols}
    return ex


def _tokens(batch: dict, task, cols, cfg, name, tokenizer, template, max_len) -> dict:
    """One streamed batch: rows -> conversations -> input_ids and labels (an empty answer skipped, as prepared)."""
    from unsloth_sft.data.tokenize import _tokenize_chunk

    convs, where = [], []
    for row, n in zip(batch_rows(batch), batch["_n"]):
        messages = to_messages(row, task, cols, cfg, name(n))
        if messages is None:
            if not cfg.skip_empty:
                raise DataError(f"{name(n)}: the answer is empty; fill it in or set data.skip_empty: true")
            continue
        convs.append(messages)
        where.append(name(n))
    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    _tokenize_chunk(tokenizer, convs, template, cfg, max_len, where, 0, input_ids, labels)
    return {"input_ids": input_ids, "labels": labels}


def tokenized_stream(ex: Examples, cfg: RunConfig, tokenizer, template: str):
    """The training stream tokenized as the trainer reads it (an IterableDataset of input_ids and labels)."""
    from unsloth_sft.data.tokenize import token_features

    s = ex.stream
    kwargs = {"task": ex.task, "cols": s["cols"], "cfg": cfg.data, "name": s["name"], "tokenizer": tokenizer}
    kwargs |= {"template": template, "max_len": cfg.model.max_seq_length}
    return s["rows"].map(
        _tokens,
        fn_kwargs=kwargs,
        batched=True,
        batch_size=BATCH,
        remove_columns=["_n", "_json"],
        features=token_features(),
    )
