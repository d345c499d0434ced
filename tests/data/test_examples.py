"""Which examples a run shows and checks with (data.examples.pick_examples): the first of the test split, else of
training; the export check, infer's default prompt and the playground take the same ones."""

from __future__ import annotations

from tests.conftest import ROOT, small_config
from unsloth_sft.data.examples import load_examples, pick_examples
from unsloth_sft.data.prompts import prompts_for, text_prompt


def test_the_test_split_first(tmp_path, tokenizer):
    cfg = small_config(tmp_path, "data.source=sample:hindi-dialogsum")
    examples = load_examples(cfg)
    picked = pick_examples(examples, 3)
    assert picked.split == "test" and picked.conversations == examples.test_conversations[:3]
    assert picked.rows.rows == examples.test.rows[:3]
    assert picked.prompts(tokenizer, "chat") == prompts_for(tokenizer, examples.test_conversations[:3], "chat")


def test_training_examples_when_there_is_no_test_split(tmp_path):
    train = ROOT / "src/unsloth_sft/samples/alpaca-mini/train.jsonl"  # the file alone: no test split beside it
    examples = load_examples(small_config(tmp_path, f"data.source={train}", "data.test_size=0"))
    picked = pick_examples(examples, 2)
    assert not examples.test_conversations
    assert picked.split == "train" and picked.conversations == examples.train_conversations[:2]


def test_raw_text_picks_documents_and_prompts_their_opening(tmp_path, tokenizer):
    cfg = small_config(tmp_path, "data.source=sample:tiny-book", "data.task=text", "data.test_size=0")
    picked = pick_examples(load_examples(cfg), 1)
    assert picked.split == "train" and len(picked.texts) == 1 and not picked.conversations
    assert picked.prompts(tokenizer, "plain") == [text_prompt(tokenizer, picked.texts[0][:200])]


def test_every_consumer_takes_the_same_examples(tmp_path, tokenizer):
    from unsloth_sft.app.playground import example_pairs
    from unsloth_sft.evaluation.infer import prompt_for
    from unsloth_sft.export.check import eval_prompts

    cfg = small_config(tmp_path, "data.source=sample:chat", "data.task=chat")
    picked = pick_examples(load_examples(cfg), 2)
    checked, template = eval_prompts(cfg, tokenizer, 2)
    assert checked == picked.prompts(tokenizer, template)
    assert prompt_for(cfg, tokenizer, None, "chat") == checked[0]
    pairs, where = example_pairs(cfg, "chat")
    assert where == "test split" and [ref for _, ref in pairs[:2]] == [
        next(m["content"] for m in c if m["role"] == "assistant") for c in picked.conversations
    ]
