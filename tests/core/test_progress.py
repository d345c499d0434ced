"""Progress a person can read (core.progress): numbers, durations and sizes written for people, the plain progress
line a log gets, and training's step lines in place of the Trainer's own bar, table and log dicts."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import pytest

from unsloth_sft.core.progress import Progress, duration, number, size


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (10180.3, "tok/s", "10,180 tok/s"),
        (1234567, "", "1,234,567"),
        (26.905, "", "26.9"),
        (2.31549, "", "2.315"),
        (2.0, "", "2"),
        (0, "", "0"),
        (0.0001, "", "0.0001"),
        (0.34403, "", "0.344"),
        (5e-5, "", "5e-5"),
        (1.5e-5, "", "1.5e-5"),
        (2e-10, "", "2e-10"),
        (None, "", "-"),
        (math.nan, "MiB", "- MiB"),
    ],
)
def test_numbers_are_written_for_people(value, unit, text):
    assert number(value, unit) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(4.2, "4.2s"), (9.97, "10s"), (42.4, "42s"), (59.7, "1m00s"), (80, "1m20s"), (3725, "1h02m"), (None, "-")],
)
def test_durations_are_written_for_people(seconds, text):
    assert duration(seconds) == text


@pytest.mark.parametrize(
    ("n_bytes", "text"),
    [(300, "300 B"), (1536, "1.5 KiB"), (607_904, "594 KiB"), (5 * 2**20, "5 MiB"), (536_870_912 * 3, "1.5 GiB")],
)
def test_sizes_are_written_for_people_never_0_mib(n_bytes, text):
    assert size(n_bytes) == text


def test_the_progress_line_of_a_log_says_count_figures_elapsed_and_eta():
    bar = Progress(60, "train", unit="step", enabled=False)
    bar.n, bar.postfix = 12, "loss 2.315, 10,180 tok/s"
    assert bar.line(8.2) == "train: 12/60 steps (20%), loss 2.315, 10,180 tok/s | 8.2s elapsed, ETA 33s"
    bar.n = 30
    assert bar.line(80).endswith("| 1m20s elapsed, ETA 1m20s")
    bar.n = 0
    assert bar.line(0.5).endswith("| 0.5s elapsed, ETA -")  # no speed yet: no guess
    unknown = Progress(None, "gguf f16, reading", unit="tensor", enabled=False)
    unknown.n = 5
    assert unknown.line(3.0) == "gguf f16, reading: 5 tensors | 3.0s elapsed"
    written = Progress(511.2, "gguf f16, writing", unit="MiB", enabled=False)  # a symbol takes no plural s
    written.n = 242.4
    assert written.line(2.0).startswith("gguf f16, writing: 242/511 MiB (47%) | 2.0s elapsed, ETA 2.2s")


def test_a_log_gets_a_line_per_interval_and_the_last_one_once(capsys, monkeypatch):
    monkeypatch.setenv("UNSLOTH_SFT_PROGRESS_S", "1e9")
    with Progress(3, "tokenize", unit="conversation") as bar:
        bar.update()
        bar.update(2)
        bar.update(0, "extra")  # the end again: no second last line
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tokenize: 3/3 conversations (100%) | ")
    monkeypatch.setenv("UNSLOTH_SFT_PROGRESS_S", "0")
    with Progress(2, "generating", unit="prompt") as bar:
        bar.update()
        bar.update()
    assert [line.split(" |")[0] for line in capsys.readouterr().out.splitlines()] == [
        "generating: 1/2 prompts (50%)",
        "generating: 2/2 prompts (100%)",
    ]


class FakeTrainer:
    """The callback list of a Trainer, without a model."""

    def __init__(self, callbacks):
        from transformers.trainer_callback import CallbackHandler

        self.callback_handler = CallbackHandler(callbacks, None, None, None, None)

    def add_callback(self, callback):
        self.callback_handler.add_callback(callback)

    def remove_callback(self, callback):
        self.callback_handler.remove_callback(callback)

    def names(self) -> list[str]:
        return [type(c).__name__ for c in self.callback_handler.callbacks]


@pytest.mark.parametrize("bar", ["ProgressCallback", "NotebookProgressCallback"])
def test_our_step_lines_replace_the_trainers_bar_and_its_notebook_table(bar, monkeypatch):
    """In a notebook (interactive or papermill) the Trainer shows an HTML table instead of its tqdm bar."""
    from transformers.trainer_callback import DefaultFlowCallback, ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback

    from unsloth_sft.training.trainer import show_progress

    theirs = {"ProgressCallback": ProgressCallback, "NotebookProgressCallback": NotebookProgressCallback}[bar]
    monkeypatch.delenv("UNSLOTH_SFT_VERBOSE", raising=False)
    trainer = FakeTrainer([DefaultFlowCallback, theirs])
    show_progress(trainer)
    assert trainer.names() == ["DefaultFlowCallback", "StepProgress"]
    monkeypatch.setenv("UNSLOTH_SFT_VERBOSE", "1")  # --verbose: theirs and ours
    trainer = FakeTrainer([DefaultFlowCallback, theirs])
    show_progress(trainer)
    assert trainer.names() == ["DefaultFlowCallback", bar, "StepProgress"]


def test_step_lines_carry_the_loss_of_their_step(capsys, monkeypatch):
    """A logging step's line waits for its loss (the Trainer logs after the step ends)."""
    from transformers.trainer_callback import TrainerState

    from unsloth_sft.training.callbacks import StepProgress

    monkeypatch.setenv("UNSLOTH_SFT_PROGRESS_S", "0")
    state, args = TrainerState(max_steps=4), SimpleNamespace(logging_steps=2)
    steps = StepProgress()
    steps.on_train_begin(args, state, None)
    for step, loss in zip(range(1, 5), (None, 2.5, None, 0.00012)):
        state.global_step, state.num_input_tokens_seen = step, 1000 * step
        steps.on_step_end(args, state, None)
        if loss is not None:
            steps.on_log(args, state, None, logs={"loss": loss})
    steps.on_train_end(args, state, None)
    lines = [line.split(" |")[0] for line in capsys.readouterr().out.splitlines()]
    assert [line.split(",")[0] for line in lines] == [f"train: {n}/4 steps ({25 * n}%)" for n in range(1, 5)]
    assert ", loss" not in lines[0] and ", loss 2.5, " in lines[1] and ", loss 0.00012, " in lines[3]
    assert all(line.endswith(" tok/s") for line in lines)


@pytest.mark.parametrize("tty", [True, False])
def test_a_quiet_terminal_keeps_hub_download_bars_on_a_terminal_only(monkeypatch, tty):
    """A first download of several GB shows huggingface_hub's own bar on a terminal; in a log no tqdm bar runs
    (its \\r fragments), and datasets' and transformers' loading chatter is off either way."""
    import io

    from unsloth_sft.core import quiet

    for name in (
        "TQDM_DISABLE",
        "HF_HUB_DISABLE_PROGRESS_BARS",
        "HF_DATASETS_DISABLE_PROGRESS_BARS",
        "TRANSFORMERS_VERBOSITY",
    ):
        monkeypatch.setenv(name, "")  # recorded, so what quiet_terminal sets is undone after the test
        monkeypatch.delenv(name)
    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    out = io.StringIO()
    out.isatty = lambda: tty
    monkeypatch.setattr(quiet.sys, "stdout", out)
    quiet.quiet_terminal()
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error" and os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"
    assert ("HF_HUB_DISABLE_PROGRESS_BARS" in os.environ) is (not tty)
    assert ("TQDM_DISABLE" in os.environ) is (not tty)
