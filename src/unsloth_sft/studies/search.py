"""`--search optuna`: Optuna's TPE sampler picks each variant; the study lives in Optuna storage.

By default the study is study.db (SQLite) in the sweep folder and one sweep process owns it: a rerun loads the same
study and runs only the trials still missing from `--trials`; a trial that was running when the sweep stopped is
marked pruned (stopped early) and its values are queued again under the same run name, so its run folder resumes
from its checkpoints.

With `sweep.storage` (a database URL or journal:PATH) and `--worker`, any number of sweep processes, on any
machines, share one study (`studies.storage` opens it): each claims trials until the study holds `--trials` of them,
and trains each in its own sweep folder.
"""

from __future__ import annotations

import itertools
import threading

from unsloth_sft.core.errors import ConfigError, RunError
from unsloth_sft.runs.folder import RunDir
from unsloth_sft.studies.spec import Sweep, as_range, run_name, variant_config
from unsloth_sft.studies.storage import open_study, shown_storage
from unsloth_sft.studies.trials import Outcome, report_trial, run_variant, save_variant


class VariantFailed(RunError):
    """A trial's variant failed or has no value for the metric: Optuna records the trial as failed."""


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


def claimed(study, before: int | None = None) -> int:
    """Trials holding a place among --trials (numbered below `before`): finished, failed, running or queued. A trial
    that failed for a dead worker and was queued again (RetryFailedTrialCallback) holds one place, not two."""
    import warnings

    import optuna
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
    trials = study.get_trials(deepcopy=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retried = {n for t in trials for n in optuna.storages.RetryFailedTrialCallback.retry_history(t)}
    return sum(t.state in live and t.number not in retried and (before is None or t.number < before) for t in trials)


def queued(study) -> bool:
    """Whether a trial waits to be run: a dead worker's, failed for its silent heartbeat and queued again (checked
    here first, as Optuna does before each trial)."""
    import warnings

    import optuna
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a no-op without heartbeats (journal files, one sweep process)
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def objective_for(sweep: Sweep, threads: int | None, outcomes: list[Outcome], first: int):
    """Optuna's objective: suggest values, build the variant, train it in its own process, return the metric."""
    import optuna

    lock, counter = threading.Lock(), itertools.count(first)
    total = None if sweep.worker else sweep.spec.trials

    def objective(trial) -> float:
        if sweep.worker:
            # Trial numbers are handed out in order under a lock on the study: a worker whose new trial comes after
            # --trials live ones lost the race for the last place, and gives it up untrained.
            if claimed(trial.study, before=trial.number) >= sweep.spec.trials:
                trial.set_user_attr("surplus", True)
                raise optuna.TrialPruned("the study already holds --trials trials")
            trial.set_user_attr("worker", worker_name(sweep))
        values = suggest(trial, sweep)
        name = trial.user_attrs.get("run_name") or run_name(sweep.base.run_name, values, prefix=f"t{trial.number}")
        trial.set_user_attr("run_name", name)
        try:
            cfg = variant_config(sweep, name, values)
        except ConfigError as err:  # a value inside the ranges that a rule between fields refuses
            outcome = Outcome(name, "failed", str(err))
            outcomes.append(outcome)
            report_trial(outcome, next(counter), total, lock)
            raise VariantFailed(str(err)) from None
        save_variant(sweep, cfg)
        outcome = run_variant(sweep, cfg, threads)
        from unsloth_sft.studies.compare import metric_value

        value = metric_value(RunDir(cfg.run_dir), sweep.spec.metric) if outcome.status != "failed" else None
        if outcome.status != "failed" and value is None:
            outcome.status, outcome.error = (
                "failed",
                f"no '{sweep.spec.metric}' in its metrics; choose another --metric",
            )
        outcomes.append(outcome)
        report_trial(outcome, next(counter), total, lock)
        if value is None:
            raise VariantFailed(outcome.error or "failed")
        return value

    return objective


def worker_name(sweep: Sweep) -> str:
    import socket

    return f"{socket.gethostname()}:{sweep.folder.resolve()}"


def run_search(sweep: Sweep, threads: int | None) -> list[Outcome]:
    """Run trials until the study holds --trials finished ones (complete or failed)."""
    from optuna.trial import TrialState

    study = open_study(sweep)
    if sweep.worker:
        return run_worker(sweep, study, threads)
    requeue_interrupted(study)
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)))
    todo = max(0, sweep.spec.trials - done)
    print(
        f"sweep {sweep.folder}: Optuna study {shown_storage(sweep)}, {done} trials done, {todo} to run "
        f"({sweep.direction} {sweep.spec.metric})",
        flush=True,
    )
    outcomes: list[Outcome] = []
    if todo:
        objective = objective_for(sweep, threads, outcomes, done + 1)
        study.optimize(objective, n_trials=todo, n_jobs=sweep.spec.parallel, catch=(VariantFailed,))
    failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    if failed and not any(o.status == "failed" for o in outcomes):  # failures of an earlier run count too
        outcomes.append(Outcome("(earlier trials)", "failed", f"{failed} trials of this study failed"))
    return outcomes


def run_worker(sweep: Sweep, study, threads: int | None) -> list[Outcome]:
    """Claim trials of a shared study, one at a time per --parallel slot, until it holds --trials of them.

    Trials other workers are running are left alone (never requeued: their worker is alive, or its heartbeat stops
    and Optuna fails the trial and queues it again). This worker's failures are its own; the others report theirs.
    """
    total = sweep.spec.trials
    print(
        f"sweep {sweep.folder}: worker on Optuna study {shown_storage(sweep)}, {claimed(study)} of {total} trials "
        f"claimed ({sweep.direction} {sweep.spec.metric})",
        flush=True,
    )
    outcomes: list[Outcome] = []
    objective = objective_for(sweep, threads, outcomes, 1)
    while claimed(study) < total or queued(study):
        study.optimize(objective, n_trials=sweep.spec.parallel, n_jobs=sweep.spec.parallel, catch=(VariantFailed,))
    print(
        f"sweep {sweep.folder}: this worker ran {len(outcomes)} trial{'' if len(outcomes) == 1 else 's'}; the study "
        f"holds {claimed(study)} of {total}. "
        "Gather every worker's folder: unsloth-sft compare DIR1 DIR2 ... --out DIR",
        flush=True,
    )
    return outcomes
