"""A run's saved config.yaml against a new config: what resume allows to differ, and what eval and infer use.

A checkpoint resumes only with the config that trained it (keys that shape the weights, `config_changes`).
A run is scored with the data, template and model it was trained with. A params file given alongside may
change generation settings (its eval section) but must agree on the rest; `--set` changes anything, on purpose,
and is printed. `eval --data FILE` scores the run on another file, every row a test example.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unsloth_sft.config import RunConfig
from unsloth_sft.errors import ConfigError
from unsloth_sft.runs import RunDir

# Keys a rerun may change and still resume: they decide logging, saving and what happens after training,
# never the weights. Any other difference (model, data, template, LoRA, optimizer, seed...) refuses to resume.
RESUMABLE_CHANGES = tuple(
    "run_name output_dir overwrite train.resume train.logging_steps train.save_steps train.save_total_limit "
    "train.report_to train.dataset_num_proc train.stop_on_nan data.cache_tokenized data.language eval.* export.*".split()
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


# Keys of a data section that do not change what a test example looks like: they may differ from the run's.
FREE_DATA_KEYS = ("data.cache_tokenized", "data.max_samples", "data.skip_empty", "data.language")


def must_match(key: str) -> bool:
    """Keys a params file must agree on with the run: the base model, and what makes the test examples."""
    return key == "model.name" or (key.startswith("data.") and key not in FREE_DATA_KEYS)


def override_keys(overrides: list) -> set[str]:
    """The dotted keys a list of overrides sets ("a.b=1" strings or (key, value) pairs)."""
    return {(o[0] if isinstance(o, tuple) else str(o).partition("=")[0]).strip() for o in overrides}


def run_config(
    run: RunDir,
    given: RunConfig | None = None,
    overrides: list | None = None,
    where: str = "params",
    data: str | None = None,
) -> RunConfig:
    """The run's config.yaml, with `given`'s eval section and `overrides` on top; `data` swaps the test set.

    `given` (a params file, already with `overrides` applied) must agree with the run on model.name and the
    data keys; an override is the explicit way to differ, and each one that does is printed.
    """
    overrides = list(overrides or [])
    saved = run.saved_config()
    if saved is None:
        run.config()  # raises: not a run folder
    explicit = override_keys(overrides)
    old = flatten(saved)
    if given is not None:
        new = flatten(given.to_dict())
        for key in sorted(old.keys() & new.keys()):
            if must_match(key) and key not in explicit and not agrees(key, old[key], new[key]):
                raise ConfigError(
                    f"{where}: {key} is {new[key]!r} but {run} was trained with {old[key]!r}; leave the params "
                    f"out (the run's config.yaml is used), or change it on purpose with --set {key}=..."
                )
    extra: list[Any] = []
    if data is not None:  # every row of the file is a test example, shaped as the run's task
        task = run.task or "auto"
        extra = [("data.source", str(data)), ("data.split", "train"), ("data.test_split", "train"), ("data.task", task)]
        extra.append(("data.sources", None))  # a mixed run is scored on the one file
    params = {"eval": given.to_dict()["eval"]} if given is not None else None
    cfg = run.config(overrides + extra, params=params)
    final = flatten(cfg.to_dict())
    for key in sorted(explicit):
        if must_match(key) and key in old and final.get(key) != old[key]:
            print(f"note: {key} = {final.get(key)!r} (--set), the run was trained with {old[key]!r}")
    if data is not None:
        print(f"scoring {run} on {data}: every row is a test example ({cfg.data.task} task)")
    return cfg


def run_from_params(
    params: str | Path | None, overrides: list, run: str | Path | None, data: str | None = None
) -> tuple[RunDir, RunConfig]:
    """For the CLI: the run folder (--run, else the params' output_dir/run_name) and its config for eval/infer."""
    from unsloth_sft.config import load_config

    if params is None and run is None:
        raise ConfigError("give a run folder (--run RUN_DIR) or the params file that trained it")
    given = load_config(params, overrides) if params is not None else None
    folder = RunDir(run if run is not None else given.run_dir)
    return folder, run_config(folder, given, overrides, where=str(params), data=data)
