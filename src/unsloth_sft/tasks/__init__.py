"""Tasks: what the pipeline knows about each kind of data (fields, prompt, loss, metrics, model card), as records.

`registry` holds the `Task` record and the registry, `builtin` the tasks that ship, `metrics` the scores they report.
"""

from unsloth_sft.tasks import builtin  # noqa: F401  (registers the built-in tasks)
from unsloth_sft.tasks.registry import (
    TASKS,
    Task,
    aliases,
    card_language,
    detection_order,
    fields,
    get,
    names,
    register,
)

__all__ = ["TASKS", "Task", "aliases", "card_language", "detection_order", "fields", "get", "names", "register"]
