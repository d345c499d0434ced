"""Columns: which task a file's columns fit, and which column holds each field (names, synonyms, data.columns)."""

from __future__ import annotations

import unicodedata

from unsloth_sft.config import DataConfig
from unsloth_sft.errors import DataError

# Canonical fields of each task; the first ones are required, "input" and "system" are optional.
TASK_FIELDS = {
    "summarization": ("dialogue", "summary"),
    "gsm8k": ("question", "answer"),
    "qa": ("question", "answer"),
    "chat": ("messages",),
    "instruction": ("instruction", "output"),
    "completion": ("prompt", "completion"),
    "text": ("text",),
}
OPTIONAL_FIELDS = {"instruction": ("input",)}
ANSWER_FIELD = {
    "summarization": "summary",
    "gsm8k": "answer",
    "qa": "answer",
    "instruction": "output",
    "completion": "completion",
}
# Column headers auto-detection takes for a field besides its own name (any case): synonyms and Hindi headers,
# so a Hindi summarization file with संवाद / सारांश columns needs no data.columns.
ALIASES = {
    "dialogue": ("dialog", "conversation", "transcript", "संवाद", "वार्तालाप", "बातचीत", "डायलॉग"),
    "summary": ("abstract", "सारांश", "सार", "संक्षेप", "संक्षिप्त", "समरी"),
    "question": ("प्रश्न", "सवाल"),
    "answer": ("उत्तर", "जवाब"),
}
FIELDS = sorted(
    {f for fields in TASK_FIELDS.values() for f in fields} | {f for fs in OPTIONAL_FIELDS.values() for f in fs}
)


def _norm(name: str) -> str:
    return unicodedata.normalize("NFC", str(name)).strip().casefold()


def _match(name: str, columns: list[str]) -> str | None:
    """The column that holds field `name`: its own name, the same in any case, then a known synonym."""
    if name in columns:
        return name
    normed = {_norm(c): c for c in columns}
    return next((normed[_norm(a)] for a in (name, *ALIASES.get(name, ())) if _norm(a) in normed), None)


def check_columns(cfg: DataConfig) -> None:
    """data.columns maps a task field to a column of the file; a key that is no field is refused, with the fields."""
    for key, value in cfg.columns.items():
        if key not in FIELDS:
            flipped = f"; did you mean data.columns.{value}: {key}?" if value in FIELDS else ""
            raise DataError(
                f"data.columns.{key}: '{key}' is not a field; data.columns maps a field to your column, e.g. "
                f"data.columns.dialogue: Conversation{flipped} (fields: {', '.join(FIELDS)})"
            )


def _resolve_columns(
    columns: list[str], cfg: DataConfig, task: str, origin: str, answer: bool = True
) -> dict[str, str]:
    """Map each canonical field of `task` to a column: data.columns first, then the name in any case or a synonym.

    With answer=False (inference), the answer column may be absent.
    """
    optional = OPTIONAL_FIELDS.get(task, ()) + (() if answer else (ANSWER_FIELD.get(task),))
    out = {}
    for name in TASK_FIELDS[task] + OPTIONAL_FIELDS.get(task, ()):
        col = cfg.columns.get(name) or _match(name, columns)
        if col is None or col not in columns:
            if name in optional:
                continue
            fits = _auto_task(columns, cfg, answer)
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


def _auto_task(columns: list[str], cfg: DataConfig, answer: bool = True) -> str | None:
    """The first task whose fields the columns provide (by name, synonym or data.columns), or None."""
    for task in ("chat", "summarization", "instruction", "completion", "qa", "text"):
        needed = [f for f in TASK_FIELDS[task] if answer or f != ANSWER_FIELD.get(task)]
        if all(f in cfg.columns or _match(f, columns) for f in needed):
            return task
    return None


def detect_task(columns: list[str], cfg: DataConfig, origin: str, answer: bool = True) -> str:
    """The task named in config, or the first whose fields the columns (after data.columns) provide.

    With answer=False (inference inputs) the answer column need not be there.
    """
    if cfg.task != "auto":
        return cfg.task
    task = _auto_task(columns, cfg, answer)
    if task is None:
        raise DataError(
            f"{origin}: cannot tell the task from columns {', '.join(columns)}; set data.task "
            f"({', '.join(TASK_FIELDS)}) and data.columns"
        )
    return task
