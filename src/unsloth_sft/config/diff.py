"""What differs between two configs: the keys that shape training (resume refuses them) and those that may change."""

from __future__ import annotations

from typing import Any

# Keys a rerun may change and still resume: they decide logging, saving and what happens after training,
# never the weights. Any other difference (model, data, template, LoRA, optimizer, seed...) refuses to resume.
RESUMABLE_CHANGES = tuple(
    "run_name output_dir overwrite train.resume train.hub_strategy train.logging_steps train.save_steps "
    "train.save_total_limit train.report_to train.dataset_num_proc train.stop_on_nan data.cache_tokenized "
    "data.language eval.* export.*".split()
)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"seed": 1}} -> {"train.seed": 1}; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key != "columns":  # data.columns is one value: a mapping
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _may_change(key: str) -> bool:
    return any(key == k or (k.endswith(".*") and key.startswith(k[:-1])) for k in RESUMABLE_CHANGES)


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys that shape training and differ between a saved config and a new one, as `key: old -> new`.

    A key only one side has (the schema changed between versions) is not a difference, nor is a task left to
    detection on one side and resolved on the other (`agrees`).
    """
    old, now = flatten(saved), flatten(new)
    return [
        f"{k}: {old[k]!r} -> {now[k]!r}"
        for k in sorted(old.keys() & now.keys())
        if not _may_change(k) and not agrees(k, old[k], now[k])
    ]


def agrees(key: str, old: Any, new: Any) -> bool:
    """Equal values; or data.task `auto` on one side, which the run resolves (and saves) when it starts; the same
    for each source's task in data.sources."""
    if old == new or (key == "data.task" and "auto" in (old, new)):
        return True
    if key != "data.sources" or not isinstance(old, list) or not isinstance(new, list) or len(old) != len(new):
        return False
    return all(
        isinstance(a, dict)
        and isinstance(b, dict)
        and {**a, "task": None} == {**b, "task": None}
        and agrees("data.task", a.get("task"), b.get("task"))
        for a, b in zip(old, new)
    )
