"""The one BOS rule (models.tokens): a prompt carries the BOS its model was trained with, once, or none, and every
stage that renders a prompt follows it. Checked on four tokenizer families: Gemma-2 (the tiny model), Gemma-3 and
SmolLM2 (rebuilt from their packaged GGUF files), and GPT-2 (a byte-level BPE with GPT-2's special tokens)."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import pytest

from tests.conftest import small_config

TEXT = "भारत की राजधानी नई दिल्ली है। The capital of India is New Delhi."


def gguf_tokenizer(name: str):
    from unsloth_sft.models.catalogue import CATALOGUE
    from unsloth_sft.models.gguf import concatenate, read_metadata
    from unsloth_sft.models.gguf_tokenizer import build_tokenizer

    entry = CATALOGUE[name]
    if importlib.util.find_spec(entry.packages[0]) is None:
        pytest.skip(f"{name} is not installed (scripts/setup.sh installs it: {entry.pip})")
    parts = entry.locate()
    with tempfile.TemporaryDirectory() as tmp:
        gguf = parts[0] if len(parts) == 1 else concatenate(parts, Path(tmp) / "model.gguf")
        return build_tokenizer(read_metadata(gguf), entry)


def gpt2_tokenizer():
    """GPT-2's tokenizer shape: byte-level BPE, `<|endoftext|>` as BOS, EOS and UNK at once, no BOS added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    from unsloth_sft.models.tiny import sample_corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(sample_corpus()[:300], trainer)
    end = "<|endoftext|>"
    return GPT2TokenizerFast(tokenizer_object=tok, bos_token=end, eos_token=end, unk_token=end)


FAMILIES = {  # name -> (how to get its tokenizer, the BOS text its prompts must start with)
    "gemma-2 (tiny)": ("tiny", "<bos>"),
    "gemma-3": ("gemma-3-270m", "<bos>"),
    "smollm2": ("smollm2-135m-instruct", ""),
    "gpt-2": ("gpt2", ""),
}


@pytest.fixture(scope="module")
def tokenizers(tokenizer):
    made = {}

    def get(family: str):
        if family not in made:
            source = FAMILIES[family][0]
            made[family] = (
                tokenizer if source == "tiny" else gpt2_tokenizer() if source == "gpt2" else gguf_tokenizer(source)
            )
        return made[family]

    return get


FAMILY_PARAMS = [
    pytest.param(f, marks=pytest.mark.slow) if FAMILIES[f][0].endswith("m") else f for f in FAMILIES
]  # the two GGUF families read a 93-253 MB file (~10-40 s)


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_the_bos_rule(family, tokenizers):
    from unsloth_sft.models.tokens import adds_bos, bos_text

    tok, want = tokenizers(family), FAMILIES[family][1]
    assert bos_text(tok) == want and adds_bos(tok) == bool(want)
    ids = tok(bos_text(tok) + TEXT, add_special_tokens=False).input_ids
    assert ids == tok(TEXT).input_ids  # the prompt text tokenizes as the model's own encoding of the text
    assert ids.count(tok.bos_token_id) == (1 if want else 0) or tok.bos_token_id == tok.eos_token_id


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_every_stage_starts_a_prompt_the_same_way(family, tokenizers):
    """A plain-template prompt, a raw-text prompt and a raw-text training block all open with the rule's BOS."""
    from unsloth_sft.data.prompts import render, render_prompt, text_prompt
    from unsloth_sft.data.tokenize import text_blocks
    from unsloth_sft.models.tokens import bos_text

    tok = tokenizers(family)
    bos = bos_text(tok)
    turn = [{"role": "user", "content": TEXT}, {"role": "assistant", "content": "42"}]
    for template in ("qa", "alpaca", "plain"):
        prompt = render_prompt(tok, turn, template)
        assert prompt.startswith(bos) and not prompt[len(bos) :].startswith(tok.bos_token)
        assert render(tok, turn, template).text.startswith(prompt)  # training renders the same prompt
    prompt_ids = tok(text_prompt(tok, TEXT), add_special_tokens=False).input_ids
    block = text_blocks(tok, [TEXT * 4], block_size=len(prompt_ids))["input_ids"][0]
    assert block == prompt_ids  # a raw-text run continues text exactly as its training blocks began


def test_raw_text_export_check_and_infer_feed_identical_ids(tmp_path):
    """GPT-2 raw text (BOS = EOS, none added): the export check's prompts and `infer`'s are the same ids, and they
    open like a training block (no `<|endoftext|>` in front); Gemma's tiny model: both open with one <bos>."""
    from transformers import AutoTokenizer

    from unsloth_sft.data.prompts import TEXT_PROMPT_CHARS
    from unsloth_sft.data.sources import read_source
    from unsloth_sft.data.tokenize import text_blocks
    from unsloth_sft.evaluation.infer import prompt_text
    from unsloth_sft.export.check import eval_prompts
    from unsloth_sft.models.tiny import tiny_model_path

    cfg = small_config(tmp_path, "data.source=sample:tiny-book", "data.task=text", "data.test_size=0")
    book = read_source(cfg.data)["train"].rows[0]["text"]
    for tok in (gpt2_tokenizer(), AutoTokenizer.from_pretrained(tiny_model_path())):
        checked, template = eval_prompts(cfg, tok, 1)
        served = prompt_text(book[:TEXT_PROMPT_CHARS], cfg, "text", tok, "line 1")
        assert template == "plain" and checked == [served]
        ids = tok(served, add_special_tokens=False).input_ids
        cut = len(ids) - 2  # the 200-character cut may split the last word differently from the whole text
        assert text_blocks(tok, [book], block_size=len(ids))["input_ids"][0][:cut] == ids[:cut]
        assert ids.count(tok.bos_token_id) == (tok.bos_token_id != tok.eos_token_id)
