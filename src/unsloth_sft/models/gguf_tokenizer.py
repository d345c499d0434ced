"""A transformers tokenizer rebuilt from a GGUF's own vocabulary, and checked against it token by token."""

from __future__ import annotations

from unsloth_sft.core.errors import ModelError
from unsloth_sft.models.catalogue import PackagedModel

GGUF_CONTROL, GGUF_USER_DEFINED, GGUF_BYTE = 3, 4, 6  # tokenizer.ggml.token_type values
# Strings every converted tokenizer must split the way the GGUF's vocabulary says (English, Hindi, code).
CHECK_STRINGS = (
    "The capital of France is Paris.",
    'भारत की राजधानी नई दिल्ली है। राहुल ने कहा, "कल मिलते हैं!"',
    "def f(x):\n    return x * 2  # doubled\n\n",
)


def build_tokenizer(meta: dict, entry: PackagedModel | None = None):
    """A transformers tokenizer from the GGUF vocabulary: SentencePiece-BPE (llama) or byte-level BPE (gpt2)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import generate_merges

    tokens, types = meta["tokens"], meta["types"]
    vocab = {t: i for i, t in enumerate(tokens)}
    atomic = [i for i, k in enumerate(types) if k in (GGUF_CONTROL, GGUF_USER_DEFINED)]
    if (
        meta["model"] == "llama"
    ):  # SentencePiece BPE: merges follow the pieces' scores, unknown text falls back to bytes
        skip = [tokens[i] for i, k in enumerate(types) if k != 1]
        merges = generate_merges(vocab, {t: s for t, s in zip(tokens, meta["scores"])}, skip_tokens=skip)
        tok = Tokenizer(
            models.BPE(vocab=vocab, merges=merges, unk_token=tokens[meta["unk"]], fuse_unk=True, byte_fallback=True)
        )
        steps = [normalizers.Replace(" ", "▁")]
        if meta["add_space_prefix"]:
            steps.insert(0, normalizers.Prepend("▁"))
        tok.normalizer = normalizers.Sequence(steps)
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
            + ([decoders.Strip(" ", 1, 0)] if meta["add_space_prefix"] else [])
        )
    elif meta["model"] == "gpt2":  # byte-level BPE with the GGUF's own merge list
        merges = [tuple(m.split(" ", 1)) for m in meta["merges"]]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        # SmolLM's pre-tokenizer splits digits one by one before the GPT-2 regex (its tokenizer.json does too)
        tok.pre_tokenizer = (
            pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
            if meta["pre"] == "smollm"
            else byte_level
        )
        tok.decoder = decoders.ByteLevel()
    else:
        raise ModelError(f"GGUF tokenizer model '{meta['model']}' is not supported (llama and gpt2 are)")
    # Control tokens are special (skipped when decoding); user-defined ones ("\n", runs of spaces in Gemma) are
    # atomic text: add_special_tokens would mark them special too, and decoding would drop every newline.
    tok.add_special_tokens(
        [AddedToken(tokens[i], special=True, normalized=False) for i in atomic if types[i] == GGUF_CONTROL]
    )
    tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False) for i in atomic if types[i] != GGUF_CONTROL])
    bos, eos = tokens[meta["bos"]], tokens[meta["eos"]]
    if meta["add_bos"]:  # Gemma degenerates without its <bos>
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, meta["bos"])]
        )
    pad_id = meta["pad"]
    if pad_id is None or pad_id == meta["eos"]:  # a pad distinct from EOS keeps EOS trainable and visible
        pad_id = next(
            (vocab[t] for t in ("<pad>", "<|endoftext|>", "<unk>") if t in vocab and vocab[t] != meta["eos"]),
            meta["eos"],
        )
    template = meta["chat_template"] or (entry.chat_template if entry else None)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token=tokens[meta["unk"]] if meta["unk"] is not None else None,
        pad_token=tokens[pad_id],
        chat_template=template,
        add_bos_token=meta["add_bos"],
        clean_up_tokenization_spaces=False,
    )


def reference_encode(text: str, meta: dict) -> list[int]:
    """Token ids as the GGUF's vocabulary defines them, computed the slow, obvious way (for the self-check).

    llama (SentencePiece BPE): start from characters (bytes for unknown ones), repeatedly merge the adjacent
    pair whose joined piece is a normal vocabulary entry with the highest score. Control and user-defined
    tokens are atomic and matched first, longest match, as llama.cpp does with special-token parsing.
    """
    tokens, types, scores = meta["tokens"], meta["types"], meta["scores"]
    vocab = {t: i for i, t in enumerate(tokens)}
    atomic = sorted(
        (tokens[i] for i, k in enumerate(types) if k in (GGUF_CONTROL, GGUF_USER_DEFINED)), key=len, reverse=True
    )
    ids = [meta["bos"]] if meta["add_bos"] else []
    pieces, rest = [], text
    while rest:  # split off atomic tokens
        hit = next((a for a in atomic if a and rest.startswith(a)), None)
        if hit:
            pieces.append((hit, True))
            rest = rest[len(hit) :]
            continue
        end = 1
        while end < len(rest) and not any(rest.startswith(a, end) for a in atomic if a and a[0] == rest[end]):
            end += 1
        pieces.append((rest[:end], False))
        rest = rest[end:]
    for piece, is_atomic in pieces:
        if is_atomic:
            ids.append(vocab[piece])
            continue
        symbols = list(piece.replace(" ", "▁"))
        while True:
            best = None
            for i in range(len(symbols) - 1):
                joined = symbols[i] + symbols[i + 1]
                j = vocab.get(joined)
                if j is not None and types[j] == 1 and (best is None or scores[j] > best[0]):
                    best = (scores[j], i)
            if best is None:
                break
            i = best[1]
            symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
        for s in symbols:
            if s in vocab and types[vocab[s]] == 1:
                ids.append(vocab[s])
            else:
                ids.extend(vocab[f"<0x{b:02X}>"] for b in s.encode("utf-8"))
    return ids


def check_tokenizer(tokenizer, meta: dict) -> None:
    """Stop unless the tokenizer agrees with the GGUF: ids of fixed texts, control tokens, BOS/EOS, round trip."""
    tokens = meta["tokens"]
    where = "GGUF tokenizer check"
    for name in ("bos", "eos"):
        if meta[name] is not None and getattr(tokenizer, f"{name}_token_id") != meta[name]:
            raise ModelError(f"{where}: {name} id {getattr(tokenizer, f'{name}_token_id')} != the GGUF's {meta[name]}")
    controls = [i for i, k in enumerate(meta["types"]) if k == GGUF_CONTROL][:400]
    for i in controls:
        got = tokenizer.convert_tokens_to_ids(tokens[i])
        if got != i:
            raise ModelError(f"{where}: control token {tokens[i]!r} maps to {got}, the GGUF says {i}")
    for text in CHECK_STRINGS:
        got = tokenizer(text).input_ids
        if tokenizer.decode(got, skip_special_tokens=True) != text:
            raise ModelError(f"{where}: {text[:30]!r} does not decode back to itself")
        if meta["model"] == "llama":
            want = reference_encode(text, meta)
            if got != want:
                raise ModelError(
                    f"{where}: {text[:30]!r} tokenizes to {got[:12]}..., the GGUF vocabulary says {want[:12]}..."
                )
        elif meta["add_bos"] != (got[:1] == [meta["bos"]]):
            raise ModelError(f"{where}: BOS handling differs from the GGUF's add_bos_token={meta['add_bos']}")
