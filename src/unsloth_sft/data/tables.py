"""Arrow tables on disk for a run's data: views that read them a batch at a time, and the content-keyed data cache
(~/.cache/unsloth_sft/{data,conversations,tokenized}) whose entries appear whole or not at all."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from unsloth_sft.core.errors import DataError

BATCH = 1_000  # rows per Arrow record batch written and per batch a view or a map reads: what one step holds in memory
FORMAT = 1  # bump when what the data cache holds changes meaning: older entries are then never read


class View(Sequence):
    """Rows of an Arrow table read as Python values, a batch at a time: len, index, slice, iterate, compare."""

    def __init__(self, ds, convert: Callable[[dict], list]):
        self.ds, self.convert = ds, convert

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        if isinstance(i, slice):
            idx = range(len(self))[i]
            if not idx:
                return []
            return self.convert(self.ds[idx.start : idx.stop] if idx.step == 1 else self.ds[list(idx)])
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.convert(self.ds[i : i + 1])[0]

    def __iter__(self) -> Iterator:
        for batch in self.ds.iter(batch_size=BATCH):
            yield from self.convert(batch)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, other) -> list:
        return list(self) + list(other)

    def __radd__(self, other) -> list:
        return list(other) + list(self)

    def __repr__(self) -> str:
        return f"View({len(self)} rows)"


def batch_rows(batch: dict) -> list[dict]:
    """A batch of an Arrow table as rows as read: JSON rows parsed, table rows as dicts (our `_` columns left out)."""
    if "_json" in batch:
        return [json.loads(text) for text in batch["_json"]]
    if "_messages" in batch:  # shaped conversations (a mix): rows of one messages column
        return [{"messages": json.loads(text)} for text in batch["_messages"]]
    names = [k for k in batch if k not in ("_n", "_where")]
    return [dict(zip(names, values)) for values in zip(*(batch[k] for k in names))]


def digest(*parts) -> str:
    """A short content key for the data cache (sha256 of the parts as JSON)."""
    text = json.dumps([FORMAT, *parts], ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def file_key(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MB pieces (1.3 GB: ~2 s): the cache is keyed on content, not on dates."""
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror}); check the path in data.source") from None
    return h.hexdigest()


def cached(kind: str, key: str, build: Callable[[Path], dict]) -> tuple[Path, dict]:
    """(folder, meta) of the data cache entry `kind/key`; on a miss `build(folder) -> meta` writes its files first.

    Entries appear whole (an atomic folder rename) or not at all; a build that fails leaves nothing behind.
    """
    from unsloth_sft.core.files import atomic_dir, remove_leftovers
    from unsloth_sft.core.paths import cache_root
    from unsloth_sft.core.quiet import no_progress_bars

    folder = cache_root() / kind / key
    if not (folder / "meta.json").is_file():
        for note in remove_leftovers(folder.parent):  # a build a kill interrupted
            print(note)
        with atomic_dir(folder, replace=False) as tmp, no_progress_bars(transformers=False):
            meta = build(tmp)
            (tmp / "meta.json").write_text(json.dumps(meta))
    return folder, json.loads((folder / "meta.json").read_text())


def table(path: Path):
    """An Arrow file of the cache as a datasets.Dataset, memory-mapped (pages read as they are used)."""
    import datasets

    return datasets.Dataset.from_file(str(path))


def write_rows(arrow: Path, rows: Iterator[dict], features) -> int:
    """Write rows to an Arrow file a record batch at a time (datasets' ArrowWriter); how many were written."""
    from datasets.arrow_writer import ArrowWriter

    with ArrowWriter(path=str(arrow), features=features, writer_batch_size=BATCH) as writer:
        for row in rows:
            writer.write(row)
        n, _ = writer.finalize()
    return n
