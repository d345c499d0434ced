"""Token facts of a tokenizer that every stage asks: one token's id, the ids that end a reply, and the BOS rule."""

from __future__ import annotations


def token_id(tokenizer, token: str) -> int | None:
    """The id of `token` if the vocabulary has it as one token, else None (HF maps unknown tokens to <unk>).

    One lookup: get_vocab() would build a dict of the whole vocabulary (~5 s for Gemma-3's 262k tokens).
    """
    i = tokenizer.convert_tokens_to_ids(token)
    return i if i is not None and tokenizer.convert_ids_to_tokens(i) == token else None


def stop_token_ids(tokenizer) -> list[int]:
    """Tokens that end a completion: EOS first, then every other special (control) token of the vocabulary.

    A reply's text never contains a control token (decoding drops them), so the first one generated ends it:
    Gemma's <end_of_turn>, the next turn's <start_of_turn> or ChatML's <|im_start|> (as llama.cpp's and
    Ollama's templates stop), and Gemma-3's <unusedN> slots, which a base model tuned for 20 steps emitted in
    place of <end_of_turn> and then wrote on into a new "model" turn.
    """
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special = sorted(i for i, token in added.items() if getattr(token, "special", False))
    found = (token_id(tokenizer, m) for m in ("<end_of_turn>", "<start_of_turn>", "<|im_end|>", "<|im_start|>"))
    markers = [i for i in found if i is not None]
    for i in markers + special:
        if i not in ids:
            ids.append(i)
    return ids


def adds_bos(tokenizer) -> bool:
    """Whether this tokenizer's model expects a BOS token in front of every text: its own plain encoding starts
    with BOS, and BOS is not also its EOS (GPT-2's `<|endoftext|>` is both, and GPT-2 is trained without one)."""
    bos = tokenizer.bos_token_id
    if bos is None or bos == tokenizer.eos_token_id:
        return False
    ids = tokenizer("a").input_ids
    return bool(ids) and ids[0] == bos


def bos_text(tokenizer) -> str:
    """The one BOS rule for a prompt: the BOS token's text when the model expects one (`adds_bos`), else "".

    Prompts are rendered as text with special tokens written out and tokenized with add_special_tokens=False, so
    the text itself must carry the BOS the model was trained with: training, eval, infer, the export check and
    GGUF metadata all ask here (Gemma-2/3 and the tiny model: `<bos>`; SmolLM2 and GPT-2: none).
    """
    return tokenizer.bos_token if adds_bos(tokenizer) else ""
