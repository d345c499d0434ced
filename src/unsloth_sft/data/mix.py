"""Several sources in one run (data.sources): each read, split and shaped on its own, then mixed by weight or count.

Every source keeps its own task (its rows become conversations with that task's prompt) and its own test split;
the mix trains as one chat task, rendered with one template. Weighted sources share the mix in proportion to
their weights, as many examples as the sources allow with none repeated (datasets' "first_exhausted"
interleaving, made exact); `samples: N` takes exactly N (repeating a smaller source). Picks are seeded by
train.seed, so a run's mix is the same every time.
"""

from __future__ import annotations

import dataclasses
import random

from unsloth_sft import tasks
from unsloth_sft.config.data import SourceConfig
from unsloth_sft.config.run import RunConfig
from unsloth_sft.core.errors import DataError
from unsloth_sft.data.rows import Examples, conversation_features, conversation_view, source_examples, where_view
from unsloth_sft.data.sources import Split
from unsloth_sft.data.tables import BATCH, cached, digest, table, write_rows

MIX_TASK = "chat"  # what a mix trains as: conversations from every source, one template


def source_run(cfg: RunConfig, s: SourceConfig) -> RunConfig:
    """The run config of one source on its own: its source, task, columns and splits; the rest shared."""
    d = dataclasses.replace(
        cfg.data,
        source=s.source,
        task=s.task,
        columns=s.columns,
        config_name=s.config_name,
        split=s.split,
        test_split=s.test_split,
        max_samples=None,  # data.max_samples caps the mix, not each source
        sources=None,
    )
    return dataclasses.replace(cfg, data=d)


def counts(sizes: list[int], sources: list[SourceConfig]) -> list[int]:
    """Training examples per source: `samples`, else a share of the weighted ones (none repeated), else all rows."""
    weighted = [i for i, s in enumerate(sources) if s.weight is not None]
    total_weight = sum(sources[i].weight for i in weighted)
    room = min((sizes[i] * total_weight / sources[i].weight for i in weighted), default=0)
    out = []
    for i, s in enumerate(sources):
        if s.samples is not None:
            out.append(s.samples)
        elif s.weight is not None:
            out.append(max(1, min(sizes[i], round(room * s.weight / total_weight))))
        else:
            out.append(sizes[i])
    return out


def pick(n: int, size: int, rng: random.Random) -> list[int]:
    """n row indices of a source of `size` rows: a seeded sample, whole passes first when n > size."""
    return list(range(size)) * (n // size) + rng.sample(range(size), n % size)


def _prefixed(batch: dict, i: int) -> dict:
    return {"_where": [f"data.sources[{i}] {w}" for w in batch["_where"]]}


def _tables(parts: list[Examples], key: str):
    """Each source's shaped training and test tables with `data.sources[i]` before every where-string (cached)."""

    def build(tmp) -> dict:
        for i, ex in enumerate(parts):
            for name, convs in (("train", ex.train_conversations), ("test", ex.test_conversations)):
                arrow = tmp / f"{name}-{i}.arrow"
                if not len(convs):  # datasets' map writes no file for no rows
                    write_rows(arrow, iter(()), conversation_features())
                    continue
                convs.ds.map(
                    _prefixed,
                    fn_kwargs={"i": i},
                    batched=True,
                    batch_size=BATCH,
                    writer_batch_size=BATCH,
                    features=conversation_features(),
                    cache_file_name=str(arrow),
                    load_from_cache_file=False,
                    new_fingerprint=digest(key, name, i),
                )
        return {"sources": len(parts)}

    folder, _ = cached("conversations", key, build)
    return [[table(folder / f"{name}-{i}.arrow") for i in range(len(parts))] for name in ("train", "test")]


def load_mix(cfg: RunConfig):
    """Each source's examples (own task, own test split), the training ones mixed; the report of who gave what.

    The mix is an index map over the sources' shaped Arrow tables (no copy of the conversations)."""
    import datasets

    d = cfg.data
    parts, resolved = [], []
    for i, s in enumerate(d.sources):
        try:
            ex = source_examples(source_run(cfg, s))
        except DataError as err:
            raise DataError(f"data.sources[{i}]: {err}") from None
        if tasks.get(ex.task).shape == "blocks":
            raise DataError(
                f"data.sources[{i}] {s.source}: a {ex.task} source (raw text blocks) cannot be mixed with "
                "conversations; train it in a run of its own"
            )
        parts.append(ex)
        resolved.append(dataclasses.replace(s, task=ex.task))
    rng = random.Random(cfg.train.seed)
    sizes = [len(ex.train_conversations) for ex in parts]
    chosen = [pick(n, size, rng) for n, size in zip(counts(sizes, d.sources), sizes)]
    order = [(i, j) for i, ids in enumerate(chosen) for j in ids]
    rng.shuffle(order)
    if d.max_samples is not None:
        order = order[: d.max_samples]
    total = len(order)
    keys = [getattr(ex.train_conversations, "key", "") for ex in parts]
    keys += [getattr(ex.test_conversations, "key", "") for ex in parts]
    trains, tests = _tables(parts, digest("mix", keys))
    offsets = [sum(sizes[:i]) for i in range(len(parts))]
    train_ds = datasets.concatenate_datasets(trains).select([offsets[i] + j for i, j in order])
    test_ds = datasets.concatenate_datasets(tests)
    key = digest("mix", keys, [(i, j) for i, j in order])
    report = []
    for i, (s, ex) in enumerate(zip(resolved, parts)):
        n = sum(1 for k, _ in order if k == i)
        report.append(
            {
                "source": s.source,
                "task": ex.task,
                "rows": len(ex.train_conversations),
                "train_examples": n,
                "share": round(n / total, 4),
                "test_examples": len(ex.test_conversations),
            }
        )
    train_convs, test_convs = conversation_view(train_ds, key), conversation_view(test_ds, digest(key, "test"))
    return Examples(
        MIX_TASK,
        Split.arrow(train_ds, None, key),
        Split.arrow(test_ds, None, digest(key, "test")),
        train_convs,
        test_convs,
        sum(ex.skipped for ex in parts),
        mix=report,
        sources=resolved,
        train_where=where_view(train_ds),
        test_where=where_view(test_ds),
    )


def mix_lines(report: list[dict]) -> list[str]:
    """One line per source: its task, what it gave to training and test, its share."""
    return [
        f"  {m['source']} ({m['task']}): {m['train_examples']} train examples from {m['rows']} rows, "
        f"{100 * m['share']:.1f} % of training; {m['test_examples']} test"
        for m in report
    ]
