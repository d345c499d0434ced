"""A run's data: every source read and shaped (`load_examples`, before a model loads), then tokenized (`prepare`)."""

from __future__ import annotations

from collections.abc import Sequence, Sized
from dataclasses import dataclass, field
from typing import Any

from unsloth_sft import tasks
from unsloth_sft.config.run import RunConfig
from unsloth_sft.core.errors import DataError
from unsloth_sft.data.mix import load_mix
from unsloth_sft.data.prompts import TEXT_PROMPT_CHARS, choose_template, prompts_for, text_prompt
from unsloth_sft.data.rows import Examples, cell_text, source_examples
from unsloth_sft.data.sources import Split
from unsloth_sft.data.tokenize import text_blocks, tokenize_cached

MIN_TRAIN_BLOCKS = 8  # raw text: fewer training blocks than one default batch (2 x 4) is not a fine-tune


@dataclass
class PreparedData:
    task: str
    template: str
    train: Any  # datasets.Dataset with input_ids, labels
    test: Any | None
    train_conversations: Sequence[list[dict]] = field(default_factory=list)  # views of Arrow tables (data/rows.py)
    test_conversations: Sequence[list[dict]] = field(default_factory=list)
    skipped: int = 0  # rows with an empty answer, skipped and counted
    truncated: int = 0  # training examples longer than max_seq_length (cut at the end)
    mix: list[dict] = field(default_factory=list)  # data.sources: each source's task, examples and share

    @property
    def train_examples(self) -> int | None:
        """How many training examples (or blocks); None for a stream (data.streaming), which has no length."""
        return len(self.train) if isinstance(self.train, Sized) else None


def load_examples(cfg: RunConfig) -> Examples:
    """The run's data read, split, detected and shaped into conversations (no tokenizer needed): one source, or
    several mixed (data.sources). Every data error shows up here, in seconds, before a model loads."""
    if cfg.data.streaming:
        from unsloth_sft.data.stream import stream_examples

        return stream_examples(cfg)
    return load_mix(cfg) if cfg.data.sources is not None else source_examples(cfg)


def has_test(ex: Examples, cfg: RunConfig) -> bool:
    """Whether there is something to test on: test conversations, or raw text's own test split or carve."""
    if tasks.get(ex.task).shape == "blocks":  # blocks are carved after tokenizing
        return bool(ex.test and len(ex.test.rows)) or cfg.data.test_size > 0
    return bool(ex.test_conversations)


def prepare(cfg: RunConfig, tokenizer, examples: Examples | None = None) -> PreparedData:
    """Tokenize a run's train and test data (loading it first unless `examples` are given)."""
    import datasets

    d = cfg.data
    ex = examples or load_examples(cfg)
    max_len = cfg.model.max_seq_length
    if tasks.get(ex.task).shape == "blocks":
        col = ex.text_column
        blocks = text_blocks(
            tokenizer, [cell_text(r, col, w) for r, w in zip(ex.train.rows, ex.train.where)], d.block_size
        )
        ds = datasets.Dataset.from_dict(blocks)
        test_ds = None
        if ex.test is not None and len(ex.test.rows):
            texts = [cell_text(r, col, w) for r, w in zip(ex.test.rows, ex.test.where)]
            test_ds = datasets.Dataset.from_dict(text_blocks(tokenizer, texts, d.block_size))
        elif d.test_size > 0 and len(ds) > 1:
            parts = ds.train_test_split(
                test_size=int(d.test_size) if d.test_size >= 1 else d.test_size, seed=cfg.train.seed
            )
            ds, test_ds = parts["train"], parts["test"]
        return PreparedData(ex.task, tasks.get(ex.task).template, ds, test_ds)
    template = choose_template(ex.task, d, tokenizer)
    if ex.stream is not None:  # data.streaming: tokenized as the trainer reads it
        from unsloth_sft.data.stream import tokenized_stream

        train_ds, truncated = tokenized_stream(ex, cfg, tokenizer, template), 0
    else:
        train_ds, truncated, trainable = tokenize_cached(
            tokenizer, ex.train_conversations, template, d, max_len, ex.train_where
        )
        if not trainable:
            raise DataError(
                f"model.max_seq_length {max_len} is shorter than every example's prompt, so no answer token is left "
                "to train on; raise model.max_seq_length (`unsloth-sft preview` shows the token counts)"
            )
    test_ds = None
    if ex.test_conversations:
        test_ds = tokenize_cached(tokenizer, ex.test_conversations, template, d, max_len, ex.test_where)[0]
    return PreparedData(
        ex.task,
        template,
        train_ds,
        test_ds,
        ex.train_conversations,
        ex.test_conversations,
        ex.skipped,
        truncated,
        ex.mix,
    )


def check_trainable(data: PreparedData, cfg: RunConfig) -> None:
    """Refuse raw text too short to train on once its test blocks are carved (saying how many went where)."""
    if tasks.get(data.task).shape == "blocks" and len(data.train) < MIN_TRAIN_BLOCKS:
        test = len(data.test) if data.test is not None else 0
        raise DataError(
            f"{cfg.data.source}: the text makes {len(data.train) + test} blocks of {cfg.data.block_size} tokens, "
            f"{test} for test and {len(data.train)} to train on (fewer than {MIN_TRAIN_BLOCKS}); give more text, "
            "or lower data.block_size or data.test_size"
        )


@dataclass
class Picked:
    """The examples a run shows and checks with (`pick_examples`): conversations, or raw-text documents."""

    split: str  # "test" or "train": where they came from
    conversations: list[list[dict]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # raw text: whole documents (a prompt is the opening)
    rows: Split | None = None  # the split's first rows as read (the playground shows their input fields)

    def prompts(self, tokenizer, template: str) -> list[str]:
        """The inference prompts of the picked examples, rendered as training rendered them."""
        if self.texts:
            return [text_prompt(tokenizer, text[:TEXT_PROMPT_CHARS]) for text in self.texts]
        return prompts_for(tokenizer, self.conversations, template)


def pick_examples(examples: Examples, n: int | None) -> Picked:
    """The one answer to "which examples do we sample": the first n of the test split, else of the training split
    (a run without one). The before/after preview, the export check, infer's default prompt and the playground's
    examples all take these."""
    test = examples.test is not None and bool(len(examples.test.rows))
    if examples.text_column is None:
        test = bool(examples.test_conversations)
    split = examples.test if test else examples.train
    rows = Split(split.rows[:n], split.where[:n])
    if examples.text_column is not None:
        return Picked("test" if test else "train", texts=[str(r[examples.text_column]) for r in rows.rows], rows=rows)
    convs = examples.test_conversations if test else examples.train_conversations
    return Picked("test" if test else "train", conversations=convs[:n], rows=rows)
