"""Columns: which task a file's columns fit, and which column holds each field (names, synonyms, data.columns).

The fields, their synonyms and the detection order are the task records' (`unsloth_sft.tasks`).
"""

from __future__ import annotations

import unicodedata

from unsloth_sft import tasks
from unsloth_sft.config.data import DataConfig
from unsloth_sft.core.errors import DataError


def _norm(name: str) -> str:
    return unicodedata.normalize("NFC", str(name)).strip().casefold()


def _match(name: str, columns: list[str]) -> str | None:
    """The column that holds field `name`: its own name, the same in any case, then a known synonym."""
    if name in columns:
        return name
    normed = {_norm(c): c for c in columns}
    return next((normed[_norm(a)] for a in (name, *tasks.aliases(name)) if _norm(a) in normed), None)


def check_columns(cfg: DataConfig) -> None:
    """data.columns maps a task field to a column of the file; a key that is no field is refused, with the fields."""
    fields = tasks.fields()
    for key, value in cfg.columns.items():
        if key not in fields:
            flipped = f"; did you mean data.columns.{value}: {key}?" if value in fields else ""
            raise DataError(
                f"data.columns.{key}: '{key}' is not a field; data.columns maps a field to your column, e.g. "
                f"data.columns.dialogue: Conversation{flipped} (fields: {', '.join(fields)})"
            )


def resolve_columns(columns: list[str], cfg: DataConfig, task: str, origin: str, answer: bool = True) -> dict[str, str]:
    """Map each field of `task` to a column: data.columns first, then the name in any case or a synonym.

    With answer=False (inference), the answer column may be absent.
    """
    record = tasks.get(task)
    needed = record.needed(answer)
    out = {}
    for name in record.all_fields:
        col = cfg.columns.get(name) or _match(name, columns)
        if col is None or col not in columns:
            if name not in needed:
                continue
            fits = auto_task(columns, cfg, answer)
            if cfg.task != "auto" and fits not in (None, task) and name not in cfg.columns:
                raise DataError(
                    f"{origin}: columns {', '.join(columns)} look like a {fits} dataset, not {task}; "
                    f"set data.task: {fits} (--set data.task={fits}), or auto to detect it"
                )
            raise DataError(
                f"{origin}: no column '{col or name}' for the {task} field '{name}'; columns are: {', '.join(columns)}; "
                f"set data.columns.{name} to the column that holds it"
            )
        out[name] = col
    return out


def auto_task(
    columns: list[str], cfg: DataConfig, answer: bool = True, rows: list[dict] | None = None, origin: str = ""
) -> str | None:
    """The first task (in detection order) whose fields the columns provide (by name, synonym or data.columns).

    A task that also looks at the rows (GSM8K's "#### N" answers) is tried only when `rows` are given.
    """
    for record in tasks.detection_order():
        if not all(f in cfg.columns or _match(f, columns) for f in record.needed(answer)):
            continue
        if record.looks_like is not None:
            if rows is None:
                continue
            try:
                found = resolve_columns(columns, cfg, record.name, origin, answer)
            except DataError:
                continue
            if not record.looks_like(rows, found):
                continue
        return record.name
    return None


def detect_task(
    columns: list[str], cfg: DataConfig, origin: str, answer: bool = True, rows: list[dict] | None = None
) -> str:
    """The task named in config, or the first whose fields the columns (after data.columns) provide.

    With answer=False (inference inputs) the answer column need not be there; `rows` let a task look at them.
    """
    if cfg.task != "auto":
        return cfg.task
    task = auto_task(columns, cfg, answer, rows, origin)
    if task is None:
        raise DataError(
            f"{origin}: cannot tell the task from columns {', '.join(columns)}; set data.task "
            f"({', '.join(tasks.names())}) and data.columns"
        )
    return task
