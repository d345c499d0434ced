"""Sweeps: one recipe, many variants (a grid, or an Optuna search), each trained in its own process.

A sweep is not part of a run's config: a run folder's config.yaml describes one run, so the `sweep:` section of a
params file has its own small schema here (`SweepConfig`) and `load_config` leaves it out of the RunConfig. The
sweep folder holds what reproduces it: `recipe.yaml` (the params file), `sweep.yaml` (its --set overrides and the
resolved sweep section), `variants/NAME.yaml` (each variant's resolved config), `logs/NAME.log`, `study.db`
(Optuna, unless `sweep.storage` puts the study elsewhere, see `studies.storage`), and one run folder per variant,
which `unsloth_sft.studies.variant` trains and evaluates.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from unsloth_sft.config.run import RunConfig
from unsloth_sft.core.files import atomic_file, atomic_write_text
from unsloth_sft.runs.lock import RunLock
from unsloth_sft.studies.spec import LOCK, RECIPE, SWEEP, Sweep, grid_variants, variant_config
from unsloth_sft.studies.trials import Outcome, report_trial, run_variant, save_variant


def write_folder(sweep: Sweep) -> None:
    """recipe.yaml and sweep.yaml: `unsloth-sft sweep SWEEP_DIR` reruns exactly this sweep."""
    import yaml

    folder = sweep.folder
    folder.mkdir(parents=True, exist_ok=True)
    if sweep.recipe.resolve() != (folder / RECIPE).resolve():
        with atomic_file(folder / RECIPE) as tmp:
            shutil.copyfile(sweep.recipe, tmp)
    body = {"recipe": sweep.source, "overrides": sweep.overrides, "sweep": dataclasses.asdict(sweep.spec)}
    header = f"# unsloth-sft sweep {folder}   (reruns this sweep: finished variants are skipped)\n"
    atomic_write_text(folder / SWEEP, header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True))


def sweep_lock(folder: Path) -> RunLock:
    """One sweep process per folder (a second one would train the same variants twice): the run folders' lock, on
    the sweep folder's `.sweep.lock`, so a second sweep is told the holder's pid."""
    return RunLock(
        folder, folder / LOCK, "one sweep runs a sweep folder at a time; wait for it, or choose another --out"
    )


def run_sweep(sweep: Sweep) -> list[Outcome]:
    """Every variant of the grid (or every missing Optuna trial); a failed one is recorded and the rest go on."""
    import os

    threads = max(1, (os.cpu_count() or 1) // sweep.spec.parallel) if sweep.spec.parallel > 1 else None
    if sweep.spec.search == "grid":
        planned = [(n, variant_config(sweep, n, v)) for n, v in grid_variants(sweep.spec, sweep.base.run_name)]
    else:
        from unsloth_sft.studies.search import check_space

        check_space(sweep)
    # every variant's config is valid by now: nothing is written for a bad grid; the lock first, so that a second
    # sweep on the folder rewrites nothing of the first one's
    with sweep_lock(sweep.folder):
        write_folder(sweep)
        if sweep.spec.search == "optuna":
            from unsloth_sft.studies.search import run_search

            return run_search(sweep, threads)
        for _, cfg in planned:
            save_variant(sweep, cfg)
        print(f"sweep {sweep.folder}: {len(planned)} variants, {sweep.spec.parallel} at a time", flush=True)
        lock, counter = threading.Lock(), itertools.count(1)

        def one(cfg: RunConfig) -> Outcome:
            outcome = run_variant(sweep, cfg, threads)
            report_trial(outcome, next(counter), len(planned), lock)
            return outcome

        with ThreadPoolExecutor(max_workers=sweep.spec.parallel) as pool:
            return list(pool.map(one, [cfg for _, cfg in planned]))
