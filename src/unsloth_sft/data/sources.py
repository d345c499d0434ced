"""Sources: bundled samples, local files and folders, Hub datasets -> Arrow tables on disk (memory-mapped), with
where each row came from. Rows are read as views (`View`), a batch at a time: never a Python list of all rows."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from unsloth_sft.config.data import DataConfig
from unsloth_sft.core.errors import DataError
from unsloth_sft.data.tables import View, batch_rows, cached, digest, file_key, table, write_rows

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")
# A fractional data.test_size carves at most this many test rows (= eval.max_samples' default, what `eval` scores): 10 %
# of 100k rows would hold 10,000 rows out of training for an evaluation that samples 200 of them
MAX_CARVE = 200


class Split:
    """A split's rows and where each came from ("FILE line N" / "SOURCE row N", for error messages): lists, or
    views of an Arrow table (`ds`) whose `_n` column numbers the rows as the file does (or `_where` says it)."""

    def __init__(self, rows: Sequence, where: Sequence[str], ds: Any = None, key: str = "", name=None):
        self.rows, self.where, self.ds, self.key, self.name = rows, where, ds, key, name

    @classmethod
    def arrow(cls, ds, name: Callable[[int], str] | None, key: str) -> Split:
        """A split over `ds`: `name(n)` turns its `_n` column into the where-string (None: `ds` has `_where`)."""
        cols = ds.column_names
        if name is None:
            where = View(ds.select_columns(["_where"]), lambda b: b["_where"])
        else:
            where = View(ds.select_columns(["_n"]), lambda b: [name(n) for n in b["_n"]])
        rows = View(ds.select_columns([c for c in cols if c not in ("_n", "_where")]), batch_rows)
        return cls(rows, where, ds, key, name)

    def select(self, indices, tag: str) -> Split:
        """The rows at `indices` (an Arrow index map, no copy); `tag` names the choice in the cache key."""
        return Split.arrow(self.ds.select(indices), self.name, digest(self.key, tag))


def sample_names() -> list[str]:
    root = resources.files("unsloth_sft") / "samples"
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))


def sample_dir(name: str) -> Path:
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


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line that is not blank, decoded a line at a time (a bad byte names its line)."""
    at = 0
    try:
        f = path.open("rb")
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror}); check the path in data.source") from None
    with f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path} line {n}: not UTF-8 text (byte {at + err.start}); re-save the file as UTF-8"
                ) from None
            at += len(raw)
            if line.strip():
                yield n, line


def jsonl_rows(path: Path) -> Iterator[dict]:
    for n, line in text_lines(path):
        try:
            json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path} line {n}: invalid JSON ({err.msg} at column {err.colno}); fix or remove the line"
            ) from None
        yield {"_n": n, "_json": line.strip()}


def json_splits(path: Path) -> dict[str, list]:
    text = read_text(path)  # a JSON document is parsed whole: big sources belong in JSONL, read a line at a time
    if not text.strip():
        raise DataError(f"{path}: the file is empty; point data.source at a file with examples")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path} line {err.lineno}: invalid JSON ({err.msg} at column {err.colno}); is the file truncated?"
        ) from None
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        return data
    if isinstance(data, list):
        return {"": data}
    raise DataError(
        f'{path}: expected a list of records or {{"train": [...], "test": [...]}}, got {type(data).__name__}'
    )


def _read_json(path: Path) -> dict[str, Split]:
    """JSON and JSONL as Arrow tables of the rows' JSON text (`_json`, parsed a batch at a time when read), cached
    by the file's content: the rows keep their exact JSON shape, whatever types or keys vary between them."""
    import datasets

    features = datasets.Features({"_n": datasets.Value("int64"), "_json": datasets.Value("string")})
    key = file_key(path)
    if path.suffix == ".jsonl":
        folder, meta = cached(
            "data", digest("jsonl", key), lambda tmp: {"rows": write_rows(tmp / "0.arrow", jsonl_rows(path), features)}
        )
        if not meta["rows"]:
            raise DataError(f"{path}: the file is empty; point data.source at a file with examples")
        return {"train": Split.arrow(table(folder / "0.arrow"), lambda n: f"{path} line {n}", key)}

    def build(tmp: Path) -> dict:
        data = json_splits(path)
        for i, rows in enumerate(data.values()):
            lines = ({"_n": n + 1, "_json": json.dumps(r, ensure_ascii=False)} for n, r in enumerate(rows))
            write_rows(tmp / f"{i}.arrow", lines, features)
        return {"splits": list(data)}

    folder, meta = cached("data", digest("json", key), build)
    splits: dict[str, Split] = {}
    for i, name in enumerate(meta["splits"]):
        at = f"{path} [{name}] item " if name else f"{path} item "
        splits[name or "train"] = Split.arrow(
            table(folder / f"{i}.arrow"), lambda n, at=at: f"{at}{n}", digest(key, name)
        )
    return splits


def _numbered(ds, first: int):
    """`ds` with an `_n` column numbering its rows from `first` (an in-memory column beside the mapped table)."""
    import numpy as np

    return ds.add_column("_n", np.arange(first, first + len(ds), dtype=np.int64))


def _read_table(path: Path) -> dict[str, Split]:
    import datasets

    if path.suffix == ".csv":
        lines = text_lines(path)  # UTF-8 check with a line number before pandas' less helpful one, a line at a time
        if next(lines, None) is None:
            raise DataError(f"{path}: the file is empty; point data.source at a file with examples")
        for _ in lines:
            pass
    try:
        if path.suffix == ".csv":  # as written: every column text ("007" stays), "NA"/"None" are not missing
            import csv

            with path.open(encoding="utf-8-sig", newline="") as f:
                header = next(csv.reader([f.readline()]), [])
            features = datasets.Features({name: datasets.Value("string") for name in header})
            ds = datasets.Dataset.from_csv(str(path), features=features, keep_default_na=False, na_filter=False)
        else:
            import pyarrow.parquet as pq

            pq.read_metadata(str(path))  # a damaged file fails here, quietly (datasets would also log an error line)
            ds = datasets.Dataset.from_parquet(str(path))
    except Exception as err:  # pandas/pyarrow parse errors: name the file and keep their one-line reason
        raise DataError(f"{path}: cannot parse as {path.suffix[1:]} ({str(err).splitlines()[0][:200]})") from None
    offset = 2 if path.suffix == ".csv" else 1  # csv: line 1 is the header
    return {"train": Split.arrow(_numbered(ds, offset), lambda n: f"{path} line {n}", file_key(path))}


def read_path(path: Path) -> dict[str, Split]:
    if path.is_dir():
        files = [c for c in sorted(path.iterdir()) if c.suffix in SUFFIXES]
        named = {c.stem: c for c in files if c.stem in ("train", "test", "validation")}
        splits: dict[str, Split] = {name: read_path(child)["train"] for name, child in named.items()}
        if "train" not in splits and len(files) == 1:  # one data file of another name: it is the source
            splits = read_path(files[0])
        if "train" not in splits:
            raise DataError(
                f"{path}: folder has no train.* file ({'/'.join(SUFFIXES)}); name the training file train.jsonl etc."
            )
        return splits
    if path.suffix == ".txt":
        import datasets

        text = read_text(path)
        if not text.strip():
            raise DataError(f"{path}: the file is empty; point data.source at a file with text")
        ds = datasets.Dataset.from_dict({"_n": [1], "_json": [json.dumps({"text": text}, ensure_ascii=False)]})
        return {"train": Split.arrow(ds, lambda n: str(path), file_key(path))}
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
        name: Split.arrow(
            _numbered(split, 1), lambda n, name=name: f"{cfg.source} [{name}] row {n}", split._fingerprint
        )
        for name, split in dsd.items()
    }


def read_source(cfg: DataConfig) -> dict[str, Split]:
    """Every split the source has, as Arrow tables (sample:NAME, a local file or folder, or a Hub dataset id)."""
    src = cfg.source
    if src.startswith("sample:"):
        return read_path(sample_dir(src.split(":", 1)[1]))
    path = Path(src).expanduser()
    if path.exists():
        return read_path(path)
    if path.suffix in SUFFIXES or src.startswith((".", "/", "~")):
        raise DataError(f"data.source '{src}': file not found; check the path (relative to {Path.cwd()})")
    return _read_hub(cfg)


def train_test(cfg: DataConfig, seed: int, max_carve: int | None = MAX_CARVE) -> tuple[Split, Split | None]:
    """The training rows and the test rows: the source's test split, or a seeded carve of test_size.

    A fractional test_size carves at most `max_carve` rows (said in one line); the rest stay in training. An integer
    test_size is a count asked for, and is carved as given. The carve is an index map over the Arrow table, no copy.
    """
    import math
    import os

    import datasets
    import numpy as np

    splits = read_source(cfg)
    if cfg.split not in splits:
        raise DataError(f"data.split '{cfg.split}' not in {cfg.source}; splits: {', '.join(splits)}")
    train = splits[cfg.split]
    test_name = cfg.test_split or next((s for s in ("test", "validation") if s in splits and s != cfg.split), None)
    if cfg.test_split and cfg.test_split not in splits:
        raise DataError(f"data.test_split '{cfg.test_split}' not in {cfg.source}; splits: {', '.join(splits)}")
    if not len(train.rows):
        raise DataError(f"{cfg.source}: split '{cfg.split}' has no rows")
    test = splits[test_name] if test_name else None
    n = len(train.rows)
    if test is None and cfg.test_size > 0 and n > 1:
        size = int(cfg.test_size) if cfg.test_size >= 1 else cfg.test_size
        wanted = math.ceil(size * n) if isinstance(size, float) else size  # as datasets counts
        if isinstance(size, float) and max_carve is not None and wanted > max_carve:
            size = max_carve
            if os.environ.get("RANK", "0") == "0":  # once per job, not once per training process
                print(
                    f"data: test_size {cfg.test_size} of {n} rows would carve {wanted} test rows; "
                    f"carving {max_carve} (the rest train; an integer data.test_size carves as many as it says)",
                    flush=True,
                )
        index = datasets.Dataset.from_dict({"i": np.arange(n)})  # the same seeded carve as datasets' own split
        try:
            parts = index.train_test_split(test_size=size, seed=seed)
        except ValueError as err:
            raise DataError(f"data.test_size {cfg.test_size}: {err}") from None
        carve = [size, seed]
        ids = {k: parts[k].with_format("numpy")["i"][:] for k in ("train", "test")}
        train, test = train.select(ids["train"], f"train {carve}"), train.select(ids["test"], f"test {carve}")
    if cfg.max_samples is not None and cfg.max_samples < len(train.rows):
        train = train.select(range(cfg.max_samples), f"first {cfg.max_samples}")
    return train, test
