"""The data section (one source, or several mixed), and the rules that check it."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated

from pydantic import Field
from pydantic.dataclasses import dataclass

from unsloth_sft.config.types import STRICT, Columns, Count, Names, Number, Positive, TaskName, Template
from unsloth_sft.core.errors import ConfigError


@dataclass(config=STRICT)
class SourceConfig:
    """One source of a mixed run (data.sources); the other data keys (test_size, template ...) are shared."""

    source: str  # sample:NAME | Hub id | local file or folder, as data.source
    task: TaskName = "auto"  # auto guesses from this source's columns
    columns: Columns = field(default_factory=dict)  # canonical field -> this source's column
    config_name: str | None = None  # Hub dataset subset
    split: str = "train"  # training split of this source
    test_split: str | None = None  # None: this source's "test" split if it has one, else carve data.test_size
    weight: Positive | None = None  # share of the mix, relative to the other weighted sources (none oversampled)
    samples: Count | None = None  # exactly this many training examples (repeated when the source has fewer)


@dataclass(config=STRICT)
class DataConfig:
    source: str = "sample:hindi-dialogsum"  # sample:NAME | Hub id | .json/.jsonl/.csv/.parquet/.txt path
    task: TaskName = "auto"  # auto guesses from the columns
    config_name: str | None = None  # Hub dataset subset, e.g. "main" for openai/gsm8k
    split: str = "train"  # training split of the source
    test_split: str | None = None  # None: the source's "test" split if it has one, else carve test_size
    test_size: Annotated[Number, Field(ge=0)] = 0.1  # fraction (<1) or count (>=1) carved from train if no test split
    max_samples: Count | None = None  # cap on training examples, for quick runs
    columns: Columns = field(default_factory=dict)  # canonical field -> your column, e.g. {dialogue: संवाद}
    template: Template = "auto"  # auto: chat template for chat-like tasks when the tokenizer has one
    instruction: str | None = None  # summarization instruction; None = bilingual default
    system_prompt: str | None = None  # prepended as a system turn (merged into the first user turn for Gemma)
    train_on_completions_only: bool = True  # loss on the answer only; prompt tokens labelled -100
    last_turn_only: bool = False  # chat: train on the last assistant turn only instead of all of them
    block_size: Count = 128  # raw text: tokens per training block
    skip_empty: bool = True  # rows with an empty answer are skipped and counted (False: error)
    cache_tokenized: bool = True  # reuse tokenized rows from ~/.cache/unsloth_sft/tokenized when nothing changed
    # read the source as training goes (a datasets IterableDataset): nothing prepared or cached first, for sources
    # bigger than the disk cache; needs train.max_steps; the test split is the source's own or its first rows
    streaming: bool = False
    language: Names | None = (
        None  # model card languages (ISO 639-1, e.g. [hi, en]); None: the task's (unsloth_sft.tasks)
    )
    sources: list[SourceConfig] | None = None  # several sources mixed in one run (instead of data.source)


def check_data(d: DataConfig) -> None:
    """test_size is a fraction or a whole count, never 2.5 examples."""
    if d.test_size >= 1 and d.test_size != int(d.test_size):
        raise ConfigError(f"data.test_size must be a fraction below 1 or a whole count, got {d.test_size}")
    check_sources(d)


def source_names(d: DataConfig) -> list[str]:
    """The run's data: data.source, or each source of data.sources."""
    return [s.source for s in d.sources] if d.sources is not None else [d.source]


def check_sources(d: DataConfig) -> None:
    """A mix: at least one source, each with a weight or a sample count (not both), trained as one chat task."""
    if d.sources is None:
        return
    if not d.sources:
        raise ConfigError("data.sources is empty; list at least one {source: ...} or use data.source")
    if d.task not in ("auto", "chat"):
        raise ConfigError(
            f"data.task {d.task} with data.sources: a mix trains as one chat task; set each source's task in "
            "data.sources[i].task and leave data.task auto"
        )
    for i, s in enumerate(d.sources):
        if s.weight is not None and s.samples is not None:
            raise ConfigError(f"data.sources[{i}] ({s.source}): give weight or samples, not both")
