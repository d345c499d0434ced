"""Third-party chatter kept off stderr, where only our one-line errors belong, and loading bars kept out of logs."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

# bitsandbytes tries to fetch an optional CPU kernel from the Hub when it is imported on AVX512-BF16 CPUs and
# logs a warning when it cannot (offline, or no `kernels` package); its own fallback kernel is then used.
NOISY_LOGGERS = ("bitsandbytes.backends.cpu.ops",)


# What the field's libraries print that tells a user nothing, turned off by their own documented switches: transformers'
# advisory warnings and weight-loading bars, datasets' progress bars (`Loading weights`, `Truncating train dataset`,
# `Writing model shards`). Our own progress (core.progress) says where a command is.
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}
# In a log, any tqdm bar is a run of \r-joined fragments: huggingface_hub's download bars too. On a terminal they stay,
# the one sign of life during a first download of several GB.
LOG_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
VERBOSE_ENV = "UNSLOTH_SFT_VERBOSE"  # set by `unsloth-sft --verbose`: every library's own output, as it prints it


def quiet_terminal(verbose: bool = False) -> None:
    """The CLI's output: ours only, unless verbose. A variable the user set keeps their value. Before any import of
    the libraries it steers (they read these when they load), and inherited by notebooks and sweep trials."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        return
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    if not sys.stdout.isatty():  # ours are lines there (core.progress)
        for name, value in LOG_ENV.items():
            os.environ.setdefault(name, value)
    silence_known_noise()


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") == "1"


def silence_known_noise() -> None:
    """Loggers that say nothing a user can act on, off before anything imports them (cheap: no import)."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def stderr_to_stdout() -> Iterator[None]:
    """Python-level writes to stderr (notices, warnings) go to stdout meanwhile: a log still has them, and a
    bad-input error stays the only line on stderr."""
    with contextlib.redirect_stderr(sys.stdout):
        yield


@contextlib.contextmanager
def no_progress_bars(transformers: bool = True) -> Iterator[None]:
    """Loading bars off (transformers' "Loading weights", datasets' "Saving the dataset"), restored after.

    transformers=False leaves transformers alone (and unimported: unsloth may still have to come first).
    """
    import datasets

    restore = []
    if transformers:
        from transformers.utils import logging as hf_logging

        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            restore.append(hf_logging.enable_progress_bar)
    if datasets.is_progress_bar_enabled():
        datasets.disable_progress_bars()
        restore.append(datasets.enable_progress_bars)
    try:
        yield
    finally:
        for undo in restore:
            undo()


def warn(message: str) -> None:
    """One line on stderr for something the user should know but that does not stop the command."""
    print(f"unsloth-sft: warning: {message}", file=sys.stderr, flush=True)
