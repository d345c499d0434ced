"""Trainer callbacks: memory figures (GPU reserved/peak the way Unsloth's notebooks report them; CPU peak RSS) and
the stop at a NaN loss."""

from __future__ import annotations

import math
import os
import resource
import sys
import time

from transformers import TrainerCallback

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
