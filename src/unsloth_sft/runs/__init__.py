"""Run folders: `RunDir` owns a run's file names, says what the run holds and which model it loads, and decides
resume and overwrite; `config` gives the config a finished run is evaluated or used with."""

from unsloth_sft.runs.folder import RunDir, RunModel

__all__ = ["RunDir", "RunModel"]
