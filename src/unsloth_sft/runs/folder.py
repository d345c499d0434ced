"""The run folder: `RunDir` owns its file names, answers what it holds, and decides resume and overwrite."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from unsloth_sft.core.errors import ModelError, RunError
from unsloth_sft.core.files import check_writable, pid_alive, read_json, remove_leftovers

CONFIG, METRICS, ENVIRONMENT = "config.yaml", "metrics.json", "environment.json"
ADAPTER, MERGED, EVAL, CHECKPOINTS = "adapter", "merged", "eval", "checkpoints"
GGUF, MERGED_4BIT = "gguf", "merged_4bit_forced"  # llama.cpp files; unsloth's 4-bit save (GPU only)
LORA_GGUF = "lora-gguf"  # the adapter as GGUF, beside its base GGUF (export lora_gguf)
LOSS_HISTORY, LOSS_PLOT = "loss_history.json", "loss.png"
EXPORT_CHECK = "export_check.json"  # written by every export (unsloth_sft.export.check)
ERROR = "error.json"  # a sweep variant that failed: its one-line error
VARIANT_WALL = "sweep_variant.json"  # a sweep variant's wall time (train + eval)
FINISHED_MARK = METRICS  # written last, atomically: its presence means the run finished
FAILED, TRACEBACK = "failed.json", "traceback.txt"  # training crashed: its state and one-line error; the full traceback
RunState = Literal["finished", "failed", "running", "unfinished"]


@dataclass(frozen=True)
class RunModel:
    """The tuned model of a run, as something to load: `weights` (a folder or Hub id), `adapter` on top when it is
    a LoRA run loaded unmerged, and `base`, where the base model comes from."""

    weights: str
    adapter: str | None
    base: str | None

    @property
    def base_switchable(self) -> bool:
        """True when the base is these very weights with the adapter switched off (one model in memory)."""
        return self.adapter is not None


class RunDir:
    """One run folder (output_dir/run_name): what it holds, where each file goes, whether it finished."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def of(cls, folder: RunDir | str | os.PathLike) -> RunDir:
        return folder if isinstance(folder, RunDir) else cls(folder)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and self.path == other.path

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------ where things are

    config_file = property(lambda self: self.path / CONFIG)
    metrics_file = property(lambda self: self.path / METRICS)
    environment_file = property(lambda self: self.path / ENVIRONMENT)
    adapter = property(lambda self: self.path / ADAPTER)
    merged = property(lambda self: self.path / MERGED)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    loss_history = property(lambda self: self.path / LOSS_HISTORY)
    loss_plot = property(lambda self: self.path / LOSS_PLOT)
    gguf_dir = property(lambda self: self.path / GGUF)
    export_check_file = property(lambda self: self.path / EXPORT_CHECK)
    error_file = property(lambda self: self.path / ERROR)
    failed_file = property(lambda self: self.path / FAILED)
    traceback_file = property(lambda self: self.path / TRACEBACK)

    def eval_dir(self, data: str | None = None) -> Path:
        """eval/ for the run's own test split; eval-NAME/ for another dataset (`eval --data NAME.jsonl`)."""
        return self.path / (EVAL if data is None else f"{EVAL}-{Path(data).stem or 'data'}")

    # ------------------------------------------------------------ what it holds

    @property
    def is_finished(self) -> bool:
        return self.metrics_file.is_file()

    @property
    def state(self) -> RunState:
        """finished (metrics.json), failed (failed.json: training crashed), running (a live process holds its lock
        on this host), else unfinished (stopped or killed: a rerun resumes it)."""
        if self.is_finished:
            return "finished"
        if self.failed_file.is_file():
            return "failed"
        from unsloth_sft.runs.lock import holder, lock_path

        info = holder(lock_path(self.path))
        if info is None:  # no lock file: nobody writes the folder now
            return "unfinished"
        pid = info.get("pid")
        alive = isinstance(pid, int) and pid > 0 and info.get("host") == socket.gethostname() and pid_alive(pid)
        return "running" if alive else "unfinished"  # a lock file left by a killed process holds a dead pid

    def failure(self) -> dict[str, Any] | None:
        """failed.json: {"state": "failed", "step", "max_steps", "error", "type", "traceback", "checkpoint"}, or None."""
        return read_json(self.failed_file)

    def mark_failed(self, error: str, kind: str, step: int, max_steps: int | None, traceback: str) -> dict[str, Any]:
        """Write the full traceback, then failed.json naming it (written last: it points at a whole traceback)."""
        from unsloth_sft.core.files import atomic_write_text, write_json

        atomic_write_text(self.traceback_file, traceback)
        latest = self.latest_checkpoint()
        failed = {
            "state": "failed",
            "step": step,  # optimizer steps completed before the crash
            "max_steps": max_steps,
            "error": error,
            "type": kind,
            "traceback": str(self.traceback_file),
            "checkpoint": latest.name if latest else None,  # where a rerun resumes (train.resume: auto)
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        write_json(self.failed_file, failed)
        return failed

    @property
    def has_adapter(self) -> bool:
        return (self.adapter / "adapter_config.json").is_file()

    @property
    def has_merged(self) -> bool:
        return (self.merged / "config.json").is_file()

    @property
    def kind(self) -> str | None:
        """What the run made: "lora" (an adapter, maybe merged too), "full" (a full fine-tune in merged/), or None."""
        if self.has_adapter:
            return "lora"
        return "full" if self.has_merged else None

    def saved_config(self) -> dict[str, Any] | None:
        """config.yaml as a plain mapping, or None when the folder has none."""
        import yaml

        if not self.config_file.is_file():
            return None
        return yaml.safe_load(self.config_file.read_text(encoding="utf-8")) or {}

    def config(self, overrides: list | None = None, params: dict[str, Any] | None = None):
        """The RunConfig the run was trained with (config.yaml), with optional overrides on top."""
        from unsloth_sft.config.load import load_config

        if not self.config_file.is_file():
            raise RunError(f"{self.path}: no {CONFIG}, so not a run folder; pass the folder `unsloth-sft train` made")
        cfg = load_config(self.config_file, overrides or [], params=params)
        return cfg.with_task(self.task) if cfg.data.task == "auto" and self.task else cfg

    @property
    def task(self) -> str | None:
        """The task the run trained on: config.yaml's data.task (resolved when training started), else metrics.json's
        (runs saved before the task was)."""
        task = ((self.saved_config() or {}).get("data") or {}).get("task")
        return task if task not in (None, "auto") else (self.metrics() or {}).get("task")

    @property
    def base_model(self) -> str | None:
        """Where the base weights came from: config.yaml's model.name, else the adapter's base_model_name_or_path."""
        saved = self.saved_config() or {}
        name = (saved.get("model") or {}).get("name")
        if name is None and self.has_adapter:
            name = json.loads((self.adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
        return name

    def model(self, prefer: Literal["merged", "adapter"] = "merged", base: str | None = None) -> RunModel:
        """The one answer to "which model does this run load": a full fine-tune is merged/; a LoRA run is merged/
        when `prefer` is "merged" and the run has it (one plain model, no adapter overhead), else its base with
        adapter/ on top: what eval and the playground need, whose base is the same weights with the adapter off.
        `base` overrides where the base comes from (an eval's `--set model.name=...`)."""
        base = base or self.base_model
        if self.has_adapter and (prefer == "adapter" or not self.has_merged):
            if base is None:
                raise ModelError(f"{self.path}: the adapter names no base model and there is no {CONFIG}")
            return RunModel(base, str(self.adapter), base)
        if self.has_merged:
            return RunModel(str(self.merged), None, base)
        raise ModelError(
            f"{self.path}: no adapter/ or merged/ model in this run folder; train first (unsloth-sft train)"
        )

    def metrics(self) -> dict[str, Any] | None:
        return read_json(self.metrics_file)

    def eval_metrics(self, data: str | None = None) -> dict[str, Any] | None:
        return read_json(self.eval_dir(data) / METRICS)

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint whose trainer_state.json was written (transformers writes it last)."""
        if not self.checkpoints.is_dir():
            return None
        found = []
        for child in self.checkpoints.iterdir():
            m = re.fullmatch(r"checkpoint-(\d+)", child.name)
            if m and (child / "trainer_state.json").is_file():
                found.append((int(m.group(1)), child))
        return max(found)[1] if found else None

    # ------------------------------------------------------------ before training: refuse, resume or replace

    def check(self, cfg) -> None:
        """Everything that can refuse this run, before a byte is written: a finished run (unless overwrite), a
        checkpoint trained with another config, a place that cannot hold a folder. Creates nothing."""
        if self.is_finished and not cfg.overwrite:
            raise RunError(
                f"{self.path} holds a finished run; set overwrite: true (or --set overwrite=true) to "
                "replace it, or choose another run_name"
            )
        if not cfg.overwrite:
            self.check_resume(cfg, self.resume_point(cfg.train.resume))
            stale = self.latest_checkpoint()
            if cfg.train.resume == "never" and stale is not None:
                raise RunError(
                    f"{self.path} has checkpoints of an unfinished run (up to {stale.name}) that train.resume: "
                    "never would mix with this one; set overwrite: true to start over, or resume: auto"
                )
        existing = self.path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            why = "a file is in the way" if existing.exists() and not existing.is_dir() else "not writable"
            raise RunError(f"{self.path}: cannot write here ({why}: {existing}); choose a writable output_dir")

    def resume_point(self, resume: str) -> Path | None:
        """The checkpoint train.resume names: the newest complete one here (auto), none (never), or a path."""
        if resume == "never":
            return None
        if resume == "auto":
            return self.latest_checkpoint()
        path = Path(resume)
        if not (path / "trainer_state.json").is_file():
            raise RunError(f"train.resume '{resume}': not a complete checkpoint (no trainer_state.json)")
        return path

    def check_resume(self, cfg, checkpoint: Path | None) -> None:
        """Refuse to resume a checkpoint that another config trained: it would mix two runs in one folder."""
        if checkpoint is None:
            return
        owner = RunDir(checkpoint.parent.parent) if checkpoint.parent.name == CHECKPOINTS else self
        saved = owner.saved_config()
        if saved is None:
            return  # a checkpoint from elsewhere, with nothing to compare: train.resume named it on purpose
        refuse_changed_config(saved, cfg, f"{self.path}: cannot resume {checkpoint.name}", "choose another run_name")

    def prepare(self, cfg) -> tuple[Path | None, Path | None]:
        """Make the folder for a run: (checkpoint to resume from, where an overwritten run was set aside).

        With overwrite the whole old folder moves aside (.NAME.old-TIME, beside it) and is deleted only once the
        new run has written metrics.json (`drop`): a crash in between loses neither run.
        """
        self.check(cfg)
        # Only notebooks in the folder: the one papermill is writing for this very run, nothing to set aside.
        earlier = self.path.is_dir() and any(p.suffix != ".ipynb" for p in self.path.iterdir())
        aside = self.set_aside() if cfg.overwrite and earlier else None
        self.check_writable(create=True)
        for note in remove_leftovers(self.path):  # what a killed earlier attempt left half-written
            print(note)
        for old in sorted(self.path.parent.glob(f".{self.path.name}.old-*")):
            pid = old.name.rsplit("-", 1)[-1]
            if old != aside and pid.isdigit() and not pid_alive(int(pid)):
                print(f"note: {old} is a run an interrupted overwrite set aside; move it back or delete it")
        if aside is not None:
            print(f"overwrite: the previous run is in {aside} until this one finishes")
        for marker in (self.failed_file, self.traceback_file):  # started again: no longer the crashed attempt
            marker.unlink(missing_ok=True)
        resume_from = self.resume_point(cfg.train.resume)
        if resume_from is None:
            self.clear_outputs()
        return resume_from, aside

    def check_writable(self, create: bool = False) -> None:
        """The folder takes a write: say so now, not after minutes of work (a read-only copy of a run, say)."""
        check_writable(self.path, create)

    def clear_outputs(self) -> None:
        """Remove what an unfinished earlier attempt left (models, eval, loss curve): a fresh run writes its own."""
        for child in self.path.iterdir():
            stale = child.name in (ADAPTER, MERGED, LOSS_HISTORY, LOSS_PLOT, MERGED_4BIT, GGUF, LORA_GGUF, EXPORT_CHECK)
            if stale or child.name == EVAL or child.name.startswith(f"{EVAL}-"):
                shutil.rmtree(child) if child.is_dir() else child.unlink()

    def set_aside(self) -> Path:
        """Rename the folder to a hidden sibling, so a new run starts empty and the old one stays recoverable."""
        aside = self.path.with_name(f".{self.path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        self.path.rename(aside)
        return aside

    @staticmethod
    def drop(aside: Path | None) -> None:
        """Delete a set-aside run, once the run that replaced it has finished."""
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def refuse_changed_config(saved: dict, cfg, what: str, other: str) -> None:
    """One line when `cfg` differs from the config a checkpoint was trained with (`saved`), naming the keys."""
    from unsloth_sft.config.diff import config_changes

    changes = config_changes(saved, cfg.to_dict())
    if changes:
        raise RunError(
            f"{what}, it was trained with another config ({'; '.join(changes)}); set overwrite: true "
            f"(--set overwrite=true) to start this run over, or {other}"
        )
