"""Trainer callbacks: memory figures (GPU reserved/peak the way Unsloth's notebooks report them; CPU peak RSS) and
the stop at a NaN loss."""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from concurrent.futures import Future
from pathlib import Path

from transformers import TrainerCallback

from unsloth_sft.core.files import atomic_write_text, write_json
from unsloth_sft.core.quiet import warn
from unsloth_sft.runs.folder import LOSS_HISTORY

GIB = 1024**3


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def memory_stats() -> dict:
    """Current memory: GPU name/total/reserved/peak in GiB when CUDA is present, always peak RSS."""
    import torch

    stats = {"peak_rss_mb": peak_rss_mb(), "rank": int(os.environ.get("RANK", 0))}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        stats.update(
            gpu=props.name,
            gpu_total_gb=round(props.total_memory / GIB, 3),
            gpu_reserved_gb=round(torch.cuda.memory_reserved() / GIB, 3),
            gpu_peak_reserved_gb=round(torch.cuda.max_memory_reserved() / GIB, 3),
        )
    return stats


class MemoryCallback(TrainerCallback):
    """Records memory at the start and end of training; `report` holds the figures afterwards."""

    def __init__(self, verbose: bool = True):
        self.verbose = verbose
        self.start: dict = {}
        self.report: dict = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = memory_stats()
        if self.verbose and "gpu" in self.start:
            s = self.start
            print(f"GPU = {s['gpu']}. Max memory = {s['gpu_total_gb']} GB.")
            print(f"{s['gpu_reserved_gb']} GB of memory reserved.")

    def on_train_end(self, args, state, control, **kwargs):
        end = memory_stats()
        report = {"peak_rss_mb": end["peak_rss_mb"], "rank": end["rank"]}
        if "gpu" in end:
            total, start, peak = (
                end["gpu_total_gb"],
                self.start.get("gpu_reserved_gb", 0.0),
                end["gpu_peak_reserved_gb"],
            )
            report.update(
                gpu=end["gpu"],
                gpu_total_gb=total,
                gpu_reserved_at_start_gb=start,
                gpu_peak_reserved_gb=peak,
                gpu_peak_for_training_gb=round(peak - start, 3),
                gpu_peak_pct=round(100 * peak / total, 2),
                gpu_training_pct=round(100 * (peak - start) / total, 2),
            )
        self.report = report
        if self.verbose:
            print(format_memory(report))


def format_memory(report: dict) -> str:
    """The memory report as Unsloth's notebooks print it (GPU), or peak RSS (CPU)."""
    if "gpu" in report:
        return (
            f"Peak reserved memory = {report['gpu_peak_reserved_gb']} GB ({report['gpu_peak_pct']} % of "
            f"{report['gpu_total_gb']} GB on {report['gpu']}); for training = {report['gpu_peak_for_training_gb']} GB "
            f"({report['gpu_training_pct']} %). Peak RSS = {report['peak_rss_mb']} MiB."
        )
    return f"No GPU: peak RSS = {report['peak_rss_mb']} MiB (rank {report.get('rank', 0)})."


def nan_callback():
    from transformers import TrainerCallback

    class StopOnNaN(TrainerCallback):
        """Stops at the first NaN/inf loss, before a checkpoint of the broken weights can be saved."""

        def __init__(self):
            self.bad_step: int | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss) and self.bad_step is None:
                self.bad_step = state.global_step
                control.should_training_stop = True
                control.should_save = False

    return StopOnNaN()


class StepProgress(TrainerCallback):
    """Training's progress (core.progress): step / total, the last logged loss, tokens per second, elapsed and ETA;
    a bar on a terminal, a line every ~10 s in a log. Rank 0 only."""

    def __init__(self):
        self.bar = None
        self.loss = None
        self.tokens_at_start = 0
        self.pending = 0  # steps done whose loss is still to be logged

    def on_train_begin(self, args, state, control, **kwargs):
        from unsloth_sft.core.progress import Progress

        if not state.is_world_process_zero:
            return
        self.bar = Progress(state.max_steps, "train", unit="step")
        self.bar.n = state.global_step  # resumed: the steps done before count
        if self.bar.bar is not None:
            self.bar.bar.update(state.global_step)
        self.tokens_at_start = int(state.num_input_tokens_seen or 0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:  # the step's loss: now its line can be written
            self.loss = logs["loss"]
            self.show(state)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is None:
            return
        self.pending += 1
        if not (args.logging_steps and state.global_step % args.logging_steps == 0):
            self.show(state)  # else its loss comes with the log that follows (on_log writes the line)

    def show(self, state) -> None:
        from unsloth_sft.core.progress import number

        elapsed = time.perf_counter() - self.bar.started
        speed = (int(state.num_input_tokens_seen or 0) - self.tokens_at_start) / max(elapsed, 1e-9)
        shown = [f"loss {number(self.loss)}"] if self.loss is not None else []
        steps, self.pending = self.pending, 0
        self.bar.update(steps, *shown, f"{number(speed)} tok/s")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            if self.pending:
                self.show(state)
            self.bar.close()
            self.bar = None


class ComputeDtype(TrainerCallback):
    """Writes the dtype training computes in (training.outputs.compute_dtype) into the run's environment.json,
    where the run report reads it: only the Trainer knows its mixed precision, and only the model its weights."""

    def __init__(self, environment_file):
        self.environment_file = environment_file

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from unsloth_sft.core.files import read_json, write_json
        from unsloth_sft.training.outputs import compute_dtype

        env = read_json(self.environment_file) if state.is_world_process_zero and model is not None else None
        if env is not None:  # no environment.json (a trainer built outside a run): nothing to add to
            write_json(self.environment_file, {**env, "compute_dtype": compute_dtype(model, args)})


# ------------------------------------------------------------ pushes while training (train.hub_strategy)
# At each save the Trainer uploads, on a background thread, the weights at the top of export.push_to_hub and (strategy
# checkpoint) the whole checkpoint as last-checkpoint/ (all_checkpoints: checkpoint-N/). Beside the weights go the
# run's config.yaml and loss_history.json: what a fresh runtime's `train.resume: auto` checks and resumes from
# (runs.hub_resume). A push that fails is a warning with its reason and training goes on; after training one line and
# the run folder's hub_pushes.json say which went up and which failed (metrics.json's `hub_pushes` too).

HUB_PUSHES = "hub_pushes.json"  # in the run folder: each push while training, its commit or why it failed


def one_line(err: BaseException) -> str:
    """The error's type and first line, with any token taken out (an HTTP error names the URL, never the token)."""
    from huggingface_hub import get_token

    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    line = f"{type(err).__name__}: {first}" if first else type(err).__name__
    token = os.environ.get("HF_TOKEN") or get_token()
    return (line.replace(token, "***") if token else line)[:300]


class HubPushes(TrainerCallback):
    """Stages config.yaml and loss_history.json beside the weights before each save, follows each upload the save
    starts (a warning when one fails), and sums them up after training (`finish`)."""

    def __init__(self, trainer, cfg, folder):
        self.trainer = trainer
        self.repo = cfg.export.push_to_hub
        self.strategy = cfg.train.hub_strategy
        self.folder = folder
        self.jobs: list[tuple[int, str, Future]] = []  # (step, what, the upload's future), in the order they went
        self.not_started: str | None = None  # why the repo could not be created: no push while training

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save and state.is_world_process_zero:  # a save follows: after its log and evaluation
            self.stage(args, state)

    on_epoch_end = on_log = on_evaluate = on_step_end  # the step's loss and eval loss are logged before the save

    def stage(self, args, state) -> None:
        """The run's config.yaml and its loss so far into the Trainer's output_dir, whose top it pushes at a save."""
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self.folder.config_file.is_file():
            atomic_write_text(out / self.folder.config_file.name, self.folder.config_file.read_text(encoding="utf-8"))
        history = [{"step": h["step"], "loss": h["loss"]} for h in state.log_history if "loss" in h]
        evals = [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in state.log_history if "eval_loss" in h]
        write_json(out / LOSS_HISTORY, {"history": history, "eval": evals})

    def on_save(self, args, state, control, **kwargs):
        """Follow the uploads this save queued: the weights, then (checkpoint strategies) the checkpoint."""
        push = getattr(self.trainer, "push_in_progress", None)
        new = [job for job in (push.jobs if push is not None else []) if all(job is not j for *_, j in self.jobs)]
        for i, job in enumerate(new):
            what = "weights" if i == 0 else self.checkpoint_name(state.global_step)
            self.jobs.append((state.global_step, what, job))
            job.add_done_callback(lambda done, step=state.global_step, what=what: self.warn_if_failed(step, what, done))

    def checkpoint_name(self, step: int) -> str:
        return "last-checkpoint/" if self.strategy == "checkpoint" else f"checkpoint-{step}/"

    def warn_if_failed(self, step: int, what: str, job: Future) -> None:
        error = outcome(job).get("error")
        if error:
            warn(f"push of step {step} ({what}) to {self.repo} failed: {error}; training goes on")

    def finish(self) -> dict:
        """After training: wait for the uploads still queued, then hub_pushes.json and one line; the record."""
        from concurrent.futures import wait

        wait([job for *_, job in self.jobs])
        self.trainer.args.push_to_hub = False  # training is over: FSDP's Trainer.save_model gather must not push
        pushes = [{"step": step, "what": what, **outcome(job)} for step, what, job in self.jobs]
        failed = [p for p in pushes if "error" in p]
        if self.not_started:
            failed.insert(0, {"step": 0, "what": "create the repo", "error": self.not_started})
        record = {"repo": self.repo, "strategy": self.strategy, "pushes": pushes, "failed": failed}
        write_json(self.folder / HUB_PUSHES, record)
        ok = len(pushes) - sum("error" in p for p in pushes)
        line = f"hub: {ok} of {len(pushes)} pushes to {self.repo} went up while training ({self.strategy})"
        if failed:
            listed = "; ".join(f"step {p['step']} {p['what']}: {p['error']}" for p in failed[:3])
            more = f" (and {len(failed) - 3} more)" if len(failed) > 3 else ""
            line += f"; failed: {listed}{more}; see {self.folder / HUB_PUSHES}"
        print(line, flush=True)
        return record


def outcome(job: Future) -> dict:
    """{"commit": the commit id} for an upload that went up, {"error": one line} for one that did not."""
    if job.cancelled():
        return {"error": "cancelled before it started"}
    err = job.exception()
    if err is not None:
        return {"error": one_line(err)}
    return {"commit": getattr(job.result(), "oid", None)}


def start_hub_pushes(trainer, cfg, folder) -> HubPushes | None:
    """Turn on the Trainer's push at each save (rank 0) once the repo exists. A repo that cannot be created (no
    network, a refused token) is a warning: training goes on without pushes, and the final export tries again."""
    if cfg.train.hub_strategy in (None, "end") or not trainer.is_world_process_zero():
        return None
    pushes = HubPushes(trainer, cfg, folder)
    try:
        trainer.init_hf_repo()  # the Trainer's own create_repo (exist_ok), outside its constructor
    except Exception as err:
        pushes.not_started = one_line(err)
        warn(f"cannot create or reach {pushes.repo} on the Hub ({pushes.not_started}); training goes on without pushes")
        return pushes
    trainer.args.push_to_hub = True
    trainer.add_callback(pushes)
    print(f"hub: each save goes to {pushes.repo} ({cfg.train.hub_strategy})", flush=True)
    return pushes
