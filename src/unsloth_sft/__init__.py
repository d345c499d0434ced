"""unsloth-sft: notebook-first supervised fine-tuning with Unsloth, TRL and peft.

The public API is the names below (docs/api.md): what the notebooks in `notebooks/` import, and what a notebook
of your own can rely on across releases. Each is imported on first use, so `import unsloth_sft` stays cheap and
imports neither torch nor unsloth. The package's rooms, in the order a run goes through them:

    core -> tasks -> config -> runs -> models -> data -> evaluation -> export -> training
         -> pipeline (the training job, stage by stage) -> notebooks -> studies (sweeps, compare) -> app (CLI, playground)
"""

from __future__ import annotations

import importlib
from typing import Any

from unsloth_sft.core.errors import ConfigError, DataError, ModelError, RunError, SFTError

__version__ = "0.1.0"

# public name -> "module:attribute" (an attribute of "" is the module itself)
_API = {
    # config and run folders
    "RunConfig": "unsloth_sft.config.run:RunConfig",
    "load_config": "unsloth_sft.config.load:load_config",
    "save_config": "unsloth_sft.config.load:save_config",
    "RunDir": "unsloth_sft.runs.folder:RunDir",
    # the training job: the module of stages (begin, load_base, add_lora, load_data, fit, finish, ...) and all of it
    "pipeline": "unsloth_sft.pipeline:",
    "run_training": "unsloth_sft.pipeline:run_training",
    # data
    "load_examples": "unsloth_sft.data.examples:load_examples",
    "prepare": "unsloth_sft.data.examples:prepare",
    "mark_trained": "unsloth_sft.data.preview:mark_trained",
    # tasks: add your own
    "Task": "unsloth_sft.tasks.registry:Task",
    "register_task": "unsloth_sft.tasks.registry:register",
    # models
    "load_run_model": "unsloth_sft.models.load:load_run_model",
    "resolve_model_path": "unsloth_sft.models.sources:resolve_model_path",
    # evaluation, inference, export
    "evaluate_run": "unsloth_sft.evaluation.evaluate:evaluate_run",
    "generate": "unsloth_sft.evaluation.generate:generate",
    "infer_file": "unsloth_sft.evaluation.infer:infer_file",
    "prompt_for": "unsloth_sft.evaluation.infer:prompt_for",
    "run_task": "unsloth_sft.evaluation.infer:run_task",
    "run_summary": "unsloth_sft.evaluation.report:run_summary",
    "export_run": "unsloth_sft.export.plan:export_run",
    "evaluate_gguf": "unsloth_sft.export.quality:evaluate_gguf",  # a run's GGUFs scored through llama.cpp
    "LlamaServer": "unsloth_sft.export.llama_cpp:LlamaServer",  # llama.cpp's server for one GGUF, always stopped
    # notebooks and studies
    "notebook_config": "unsloth_sft.notebooks:notebook_config",
    "notebook_run": "unsloth_sft.notebooks:notebook_run",
    "notebook_recipe": "unsloth_sft.notebooks:notebook_recipe",
    "side_by_side": "unsloth_sft.notebooks:side_by_side",
    "compare": "unsloth_sft.studies.compare:compare",
    # module names that notebooks imported before the package had rooms: `from unsloth_sft import evaluate, preview,
    # report` keeps working (evaluate.evaluate_run, preview.mark_trained, report.run_summary)
    "evaluate": "unsloth_sft.evaluation.evaluate:",
    "preview": "unsloth_sft.data.preview:",
    "report": "unsloth_sft.evaluation.report:",
}

__all__ = ["ConfigError", "DataError", "ModelError", "RunError", "SFTError", "__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'unsloth_sft' has no attribute {name!r}")
    module, _, attribute = _API[name].partition(":")
    value = importlib.import_module(module)
    value = getattr(value, attribute) if attribute else value
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
