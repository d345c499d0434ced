"""Where `model.name` points: each kind of model source turns a name into a local folder (or passes a Hub id on).

The sources are tried in order; the first whose `matches` says yes resolves the name, and a name none of them
takes is tried as a Hub id (org/model). Adding a source (a model zoo, a company mirror) is one `ModelSource(...)`
appended to `SOURCES` here (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unsloth_sft.core.errors import ModelError
from unsloth_sft.models.catalogue import CATALOGUE, is_gguf_name
from unsloth_sft.models.gguf import gguf_model_path
from unsloth_sft.models.tiny import TINY_NAME, tiny_model_path


@dataclass(frozen=True)
class ModelSource:
    """One kind of `model.name`: which names it takes, and how it makes a folder (or Hub id) of one."""

    name: str  # what the source is, for messages
    matches: Callable[[str], bool]
    resolve: Callable[[str], str]  # a local folder with config.json, or a Hub id transformers loads itself


def local_folder(name: str) -> str:
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise ModelError(f"model.name '{name}': folder has no config.json, so it is not a Hugging Face model folder")
    return str(path)


def hub_id(name: str) -> str:
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelError(
            f"model.name '{name}': no such folder, and not a Hub id like org/model, a .gguf file or a "
            f"packaged model ({', '.join(CATALOGUE)})"
        )
    return name


SOURCES: list[ModelSource] = [
    ModelSource("the tiny offline Gemma-2", lambda n: n == TINY_NAME, lambda n: str(tiny_model_path())),
    ModelSource("a packaged or local GGUF", is_gguf_name, lambda n: str(gguf_model_path(n))),
    ModelSource("a local folder", lambda n: Path(n).expanduser().exists(), local_folder),
]


def resolve_model_path(name: str) -> str:
    """A local folder for `name` (the tiny model built, a GGUF converted on first use, then cached), or a Hub id."""
    source = next((s for s in SOURCES if s.matches(name)), None)
    return source.resolve(name) if source is not None else hub_id(name)
