"""The library's own exceptions: one line each, naming what is wrong and how to fix it."""

from __future__ import annotations


class SFTError(Exception):
    """Base of every error this package raises on purpose; the CLI prints it on one line and exits 2 (1: TrainingFailed)."""

    def __str__(self) -> str:
        # One line always: a multi-line message would read like a traceback in a notebook or a log.
        return " ".join(super().__str__().split("\n"))


class ConfigError(SFTError, ValueError):
    """A params file, override or notebook parameter is wrong."""


class DataError(SFTError, ValueError):
    """A dataset file, column or row cannot be used."""


class ModelError(SFTError, ValueError):
    """A model or adapter path cannot be loaded as asked."""


class RunError(SFTError, RuntimeError):
    """A run folder, disk or training state problem."""


class TrainingFailed(SFTError, RuntimeError):
    """Training crashed (not a bad input): the run folder is marked failed and holds the full traceback."""
