"""One trial of a sweep: its resolved config saved, trained (or resumed) in a child process, its outcome reported."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from typing import Literal

from unsloth_sft.config.load import save_config
from unsloth_sft.config.run import RunConfig
from unsloth_sft.core import procs
from unsloth_sft.runs.folder import RunDir
from unsloth_sft.studies.spec import LOGS, VARIANTS, Sweep


@dataclasses.dataclass
class Outcome:
    name: str
    status: Literal["finished", "skipped", "failed"]
    error: str | None = None
    wall_s: float = 0.0


def is_done(run: RunDir, evaluate: bool) -> bool:
    return run.is_finished and (not evaluate or run.eval_metrics() is not None)


def run_variant(sweep: Sweep, cfg: RunConfig, threads: int | None = None) -> Outcome:
    """Skip a finished variant (trained with this very config), else train (or resume) it in a child process."""
    from unsloth_sft.config.diff import config_changes
    from unsloth_sft.core.files import read_json, write_json

    run, name, spec = RunDir(cfg.run_dir), cfg.run_name, sweep.spec
    if is_done(run, spec.evaluate):
        changes = config_changes(run.saved_config() or {}, cfg.to_dict())
        if not changes:
            return Outcome(name, "skipped")
        return Outcome(name, "failed", f"{run} finished with another config ({'; '.join(changes)}); remove it to rerun")
    run.error_file.unlink(missing_ok=True)
    log = sweep.folder / LOGS / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "unsloth_sft.studies.variant", str(sweep.folder / VARIANTS / f"{name}.yaml")]
    cmd += ["--notebook", spec.notebook] if spec.notebook else []
    cmd += [] if spec.evaluate else ["--no-eval"]
    env = dict(os.environ)
    if threads:  # several variants at once share the cores instead of each taking all of them
        env.setdefault("OMP_NUM_THREADS", str(threads))
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        code = procs.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.perf_counter() - started
    if code == 0:
        return Outcome(name, "finished", wall_s=wall)
    if code in (130, -2):  # Ctrl-C: not a failure of the variant; a rerun resumes it
        return Outcome(name, "failed", "interrupted", wall)
    error = (read_json(run.error_file) or {}).get("error")
    if not error:  # killed (out of memory, a signal) before it could write error.json
        tail = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        error = f"exited with code {code}" + (f": {tail[-1].strip()}" if tail else "") + f" (log: {log})"
        write_json(run.error_file, {"error": error, "type": "exit", "log": str(log)})
    return Outcome(name, "failed", error, wall)


def save_variant(sweep: Sweep, cfg: RunConfig) -> None:
    path = sweep.folder / VARIANTS / f"{cfg.run_name}.yaml"
    save_config(cfg, path, f"variant of {sweep.source} in sweep {sweep.folder}")


def report_trial(outcome: Outcome, index: int, total: int | None, print_lock: threading.Lock) -> None:
    where = f"[{index}/{total}]" if total else f"[{index}]"
    what = {
        "skipped": "finished before: skipped",
        "finished": f"finished in {outcome.wall_s:.0f} s",
        "failed": f"FAILED: {outcome.error}",
    }[outcome.status]
    with print_lock:
        print(f"{where} {outcome.name}: {what}", flush=True)
