"""`--search optuna`: Optuna's TPE sampler picks each variant; the study lives in the sweep folder (SQLite).

A rerun loads the same study and runs only the trials still missing from `--trials`; a trial that was running
when the sweep stopped is marked pruned (stopped early) and its values are queued again under the same run name,
so its run folder resumes from its checkpoints.
"""

from __future__ import annotations

import itertools
import threading

from unsloth_sft.core.errors import ConfigError, RunError
from unsloth_sft.runs.folder import RunDir
from unsloth_sft.studies.spec import STUDY, Sweep, as_range, run_name, variant_config
from unsloth_sft.studies.trials import Outcome, report_trial, run_variant, save_variant

STUDY_NAME = "sweep"


class VariantFailed(RunError):
    """A trial's variant failed or has no value for the metric: Optuna records the trial as failed."""


def open_study(sweep: Sweep):
    """The sweep folder's study (created on the first run), with the sweep's direction and a seeded sampler."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints one line per trial itself
    try:
        return optuna.create_study(
            storage=f"sqlite:///{(sweep.folder / STUDY).resolve()}",
            study_name=STUDY_NAME,
            direction=sweep.direction,
            sampler=optuna.samplers.TPESampler(seed=sweep.base.train.seed),
            load_if_exists=True,
        )
    except ValueError as err:  # e.g. the stored study optimizes in the other direction
        raise ConfigError(f"{sweep.folder / STUDY}: {err}; use another sweep folder (--out)") from None


def suggest(trial, sweep: Sweep) -> dict:
    """One value per grid key: a range is sampled (log scale with :log), a list is a categorical choice."""
    values = {}
    for key, spec in sweep.spec.grid.items():
        if isinstance(spec, str):
            r = as_range(key, spec)
            if r.integer:
                values[key] = trial.suggest_int(key, int(r.low), int(r.high), log=r.log)
            else:
                values[key] = trial.suggest_float(key, r.low, r.high, log=r.log)
        elif all(v is None or isinstance(v, (bool, int, float, str)) for v in spec):
            values[key] = trial.suggest_categorical(key, spec)
        else:  # lists (target_modules) are not Optuna choices: choose by position
            values[key] = spec[trial.suggest_categorical(f"{key}#", list(range(len(spec))))]
    return values


def check_space(sweep: Sweep) -> None:
    """Every choice and both ends of every range make a valid config: a bad key or bound stops before any trial."""
    for key, spec in sweep.spec.grid.items():
        ends = (as_range(key, spec).low, as_range(key, spec).high) if isinstance(spec, str) else spec
        for value in ends:
            if isinstance(spec, str) and as_range(key, spec).integer:
                value = int(value)
            variant_config(sweep, f"{run_name(sweep.base.run_name, {key: value})}", {key: value})


def requeue_interrupted(study) -> None:
    """Trials left running by a sweep that stopped: pruned now, and their values queued again (same run name)."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.PRUNED)
        name = trial.user_attrs.get("run_name")
        study.enqueue_trial(trial.params, user_attrs={"run_name": name} if name else None)


def run_search(sweep: Sweep, threads: int | None) -> list[Outcome]:
    """Run trials until the study holds --trials finished ones (complete or failed)."""
    from optuna.trial import TrialState

    from unsloth_sft.studies.compare import metric_value

    study = open_study(sweep)
    requeue_interrupted(study)
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)))
    todo = max(0, sweep.spec.trials - done)
    print(
        f"sweep {sweep.folder}: Optuna study {sweep.folder / STUDY}, {done} trials done, {todo} to run "
        f"({sweep.direction} {sweep.spec.metric})",
        flush=True,
    )
    lock, counter, outcomes = threading.Lock(), itertools.count(done + 1), []

    def objective(trial) -> float:
        values = suggest(trial, sweep)
        name = trial.user_attrs.get("run_name") or run_name(sweep.base.run_name, values, prefix=f"t{trial.number}")
        trial.set_user_attr("run_name", name)
        try:
            cfg = variant_config(sweep, name, values)
        except ConfigError as err:  # a value inside the ranges that a rule between fields refuses
            outcome = Outcome(name, "failed", str(err))
            outcomes.append(outcome)
            report_trial(outcome, next(counter), sweep.spec.trials, lock)
            raise VariantFailed(str(err)) from None
        save_variant(sweep, cfg)
        outcome = run_variant(sweep, cfg, threads)
        value = metric_value(RunDir(cfg.run_dir), sweep.spec.metric) if outcome.status != "failed" else None
        if outcome.status != "failed" and value is None:
            outcome.status, outcome.error = (
                "failed",
                f"no '{sweep.spec.metric}' in its metrics; choose another --metric",
            )
        outcomes.append(outcome)
        report_trial(outcome, next(counter), sweep.spec.trials, lock)
        if value is None:
            raise VariantFailed(outcome.error or "failed")
        return value

    if todo:
        study.optimize(objective, n_trials=todo, n_jobs=sweep.spec.parallel, catch=(VariantFailed,))
    failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    if failed and not any(o.status == "failed" for o in outcomes):  # failures of an earlier run count too
        outcomes.append(Outcome("(earlier trials)", "failed", f"{failed} trials of this study failed"))
    return outcomes
