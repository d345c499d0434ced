"""The config a finished run is used with by eval, infer and the notebooks: its own config.yaml, which a params file
given alongside must agree with (generation settings may differ); `--set` changes anything, on purpose, and is printed.
`eval --data FILE` scores the run on another file, every row a test example.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unsloth_sft.config.diff import agrees, flatten
from unsloth_sft.config.run import RunConfig
from unsloth_sft.core.errors import ConfigError
from unsloth_sft.runs.folder import RunDir

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
    from unsloth_sft.config.load import load_config

    if params is None and run is None:
        raise ConfigError("give a run folder (--run RUN_DIR) or the params file that trained it")
    given = load_config(params, overrides) if params is not None else None
    folder = RunDir(run if run is not None else given.run_dir)
    return folder, run_config(folder, given, overrides, where=str(params), data=data)
