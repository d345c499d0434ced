"""Sources: bundled samples, local files and folders, Hub datasets -> rows with where each came from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from unsloth_sft.config.data import DataConfig
from unsloth_sft.core.errors import DataError

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")
# A fractional data.test_size carves at most this many test rows (= eval.max_samples' default, what `eval` scores): 10 %
# of 100k rows would hold 10,000 rows out of training for an evaluation that samples 200 of them
MAX_CARVE = 200


@dataclass
class Split:
    rows: list[dict[str, Any]]
    where: list[str]  # per row: "FILE line N" / "SOURCE row N", for error messages


def sample_names() -> list[str]:
    root = resources.files("unsloth_sft") / "samples"
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))


def _sample_dir(name: str) -> Path:
    if name not in sample_names():
        raise DataError(
            f"data.source: no bundled sample 'sample:{name}'; available: {', '.join('sample:' + n for n in sample_names())}"
        )
    return Path(str(resources.files("unsloth_sft") / "samples" / name))


def read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror}); check the path in data.source") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: not UTF-8 text (byte {err.start}); re-save the file as UTF-8") from None


def _read_json(path: Path) -> dict[str, Split]:
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty; point data.source at a file with examples")
    if path.suffix == ".jsonl":
        rows, where = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path} line {n}: invalid JSON ({err.msg} at column {err.colno}); fix or remove the line"
                ) from None
            where.append(f"{path} line {n}")
        return {"train": Split(rows, where)}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path} line {err.lineno}: invalid JSON ({err.msg} at column {err.colno}); is the file truncated?"
        ) from None
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        return {k: Split(v, [f"{path} [{k}] item {i + 1}" for i in range(len(v))]) for k, v in data.items()}
    if isinstance(data, list):
        return {"train": Split(data, [f"{path} item {i + 1}" for i in range(len(data))])}
    raise DataError(
        f'{path}: expected a list of records or {{"train": [...], "test": [...]}}, got {type(data).__name__}'
    )


def _read_table(path: Path) -> dict[str, Split]:
    import datasets

    if path.suffix == ".csv":
        read_text(path)  # UTF-8 check with a line number before pandas' less helpful one
        if not path.read_bytes().strip():
            raise DataError(f"{path}: the file is empty; point data.source at a file with examples")
    try:
        if path.suffix == ".csv":  # as written: every column text ("007" stays), "NA"/"None" are not missing
            import csv

            header = next(csv.reader(read_text(path).splitlines()[:1]), [])
            features = datasets.Features({name: datasets.Value("string") for name in header})
            ds = datasets.Dataset.from_csv(str(path), features=features, keep_default_na=False, na_filter=False)
        else:
            import pyarrow.parquet as pq

            pq.read_metadata(str(path))  # a damaged file fails here, quietly (datasets would also log an error line)
            ds = datasets.Dataset.from_parquet(str(path))
    except Exception as err:  # pandas/pyarrow parse errors: name the file and keep their one-line reason
        raise DataError(f"{path}: cannot parse as {path.suffix[1:]} ({str(err).splitlines()[0][:200]})") from None
    offset = 2 if path.suffix == ".csv" else 1  # csv: line 1 is the header
    return {"train": Split(ds.to_list(), [f"{path} line {i + offset}" for i in range(len(ds))])}


def _read_path(path: Path) -> dict[str, Split]:
    if path.is_dir():
        files = [c for c in sorted(path.iterdir()) if c.suffix in SUFFIXES]
        named = {c.stem: c for c in files if c.stem in ("train", "test", "validation")}
        splits: dict[str, Split] = {name: _read_path(child)["train"] for name, child in named.items()}
        if "train" not in splits and len(files) == 1:  # one data file of another name: it is the source
            splits = _read_path(files[0])
        if "train" not in splits:
            raise DataError(
                f"{path}: folder has no train.* file ({'/'.join(SUFFIXES)}); name the training file train.jsonl etc."
            )
        return splits
    if path.suffix == ".txt":
        text = read_text(path)
        if not text.strip():
            raise DataError(f"{path}: the file is empty; point data.source at a file with text")
        return {"train": Split([{"text": text}], [str(path)])}
    if path.suffix in (".json", ".jsonl"):
        return _read_json(path)
    if path.suffix in (".csv", ".parquet"):
        return _read_table(path)
    raise DataError(f"{path}: unsupported file type '{path.suffix}'; use one of {', '.join(SUFFIXES)}")


def _read_hub(cfg: DataConfig) -> dict[str, Split]:
    import datasets

    try:
        dsd = datasets.load_dataset(cfg.source, cfg.config_name)
    except Exception as err:
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise DataError(
            f"data.source '{cfg.source}': not a local file and could not be loaded from the Hugging Face Hub "
            f"({reason}); check the id, data.config_name, and the network"
        ) from None
    return {
        name: Split(split.to_list(), [f"{cfg.source} [{name}] row {i + 1}" for i in range(len(split))])
        for name, split in dsd.items()
    }


def read_source(cfg: DataConfig) -> dict[str, Split]:
    """Every split the source has, as rows (sample:NAME, a local file or folder, or a Hub dataset id)."""
    src = cfg.source
    if src.startswith("sample:"):
        return _read_path(_sample_dir(src.split(":", 1)[1]))
    path = Path(src).expanduser()
    if path.exists():
        return _read_path(path)
    if path.suffix in SUFFIXES or src.startswith((".", "/", "~")):
        raise DataError(f"data.source '{src}': file not found; check the path (relative to {Path.cwd()})")
    return _read_hub(cfg)


def train_test(cfg: DataConfig, seed: int, max_carve: int | None = MAX_CARVE) -> tuple[Split, Split | None]:
    """The training rows and the test rows: the source's test split, or a seeded carve of test_size.

    A fractional test_size carves at most `max_carve` rows (said in one line); the rest stay in training. An integer
    test_size is a count asked for, and is carved as given.
    """
    import math
    import os

    import datasets

    splits = read_source(cfg)
    if cfg.split not in splits:
        raise DataError(f"data.split '{cfg.split}' not in {cfg.source}; splits: {', '.join(splits)}")
    train = splits[cfg.split]
    test_name = cfg.test_split or next((s for s in ("test", "validation") if s in splits and s != cfg.split), None)
    if cfg.test_split and cfg.test_split not in splits:
        raise DataError(f"data.test_split '{cfg.test_split}' not in {cfg.source}; splits: {', '.join(splits)}")
    if not train.rows:
        raise DataError(f"{cfg.source}: split '{cfg.split}' has no rows")
    test = splits[test_name] if test_name else None
    if test is None and cfg.test_size > 0 and len(train.rows) > 1:
        size = int(cfg.test_size) if cfg.test_size >= 1 else cfg.test_size
        wanted = math.ceil(size * len(train.rows)) if isinstance(size, float) else size  # as datasets counts
        if isinstance(size, float) and max_carve is not None and wanted > max_carve:
            size = max_carve
            if os.environ.get("RANK", "0") == "0":  # once per job, not once per training process
                print(
                    f"data: test_size {cfg.test_size} of {len(train.rows)} rows would carve {wanted} test rows; "
                    f"carving {max_carve} (the rest train; an integer data.test_size carves as many as it says)",
                    flush=True,
                )
        index = datasets.Dataset.from_dict({"i": list(range(len(train.rows)))})
        try:
            parts = index.train_test_split(test_size=size, seed=seed)
        except ValueError as err:
            raise DataError(f"data.test_size {cfg.test_size}: {err}") from None
        pick = lambda ids: Split([train.rows[i] for i in ids], [train.where[i] for i in ids])  # noqa: E731
        train, test = pick(parts["train"]["i"]), pick(parts["test"]["i"])
    if cfg.max_samples is not None:
        train = Split(train.rows[: cfg.max_samples], train.where[: cfg.max_samples])
    return train, test
