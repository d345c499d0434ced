"""Prompt templates: one `render` turns a conversation into text plus the character spans the loss covers.

Training, evaluation and inference all call `render`, so the model sees at inference exactly the prompt it
was trained on. A conversation is a list of {"role", "content"} messages (system?, user, assistant, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

from unsloth_sft.errors import DataError

ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
QA = "Question: {question}\nAnswer:"


@dataclass
class Rendered:
    text: str  # the full text, special tokens included (tokenize with add_special_tokens=False)
    spans: list[tuple[int, int]]  # [start, end) character spans of text the loss covers


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


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


def _bos(tokenizer) -> str:
    """The BOS text to put in front of a plain prompt, if this tokenizer's model expects one (Gemma, Llama)."""
    bos = tokenizer.bos_token
    if bos is None:
        return ""
    ids = tokenizer("a").input_ids
    return bos if ids and ids[0] == tokenizer.bos_token_id and tokenizer.bos_token_id != tokenizer.eos_token_id else ""


def _merge_system(messages: list[dict]) -> list[dict]:
    """Gemma has no system role: fold the system text into the first user turn, separated by a blank line."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    if not rest or rest[0]["role"] != "user":
        raise DataError("a system message must be followed by a user message")
    if system.strip():
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
    return rest


def _chat(tokenizer, messages: list[dict], generation: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    except Exception as err:  # jinja's TemplateError from raise_exception: "System role not supported"
        if messages and messages[0]["role"] == "system" and "system" in str(err).lower():
            return _chat(tokenizer, _merge_system(messages), generation)
        raise DataError(f"the chat template refused this conversation: {err}") from None


def render_chat(tokenizer, messages: list[dict], last_turn_only: bool = False) -> Rendered:
    """Render with the tokenizer's chat template; spans cover each assistant reply and its end-of-turn marker."""
    if not has_chat_template(tokenizer):
        raise DataError("the tokenizer has no chat template; set data.template to qa, alpaca or plain")
    spans: list[tuple[int, int]] = []
    text = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = _chat(tokenizer, messages[:i], generation=True)
        text = _chat(tokenizer, messages[: i + 1], generation=False)
        if not text.startswith(prefix):
            raise DataError(
                "the chat template renders a turn differently once a reply follows it; use data.template: plain"
            )
        end = len(text.rstrip())  # the newline after <end_of_turn> is never generated: leave it out
        spans.append((len(prefix), end))
    if not spans:
        raise DataError("a conversation has no assistant message to learn from")
    full = _chat(tokenizer, messages, generation=False)
    if last_turn_only:
        spans = spans[-1:]
    return Rendered(full, spans)


def render_chat_prompt(tokenizer, messages: list[dict]) -> str:
    """The prompt for generation: every message, then the template's assistant header."""
    return _chat(tokenizer, messages, generation=True)


def _single_turn(messages: list[dict], template: str) -> tuple[str, str | None]:
    turns = _merge_system(messages)
    if len(turns) > 2 or turns[0]["role"] != "user" or (len(turns) == 2 and turns[1]["role"] != "assistant"):
        raise DataError(f"data.template {template} takes one user message and one answer; use data.template: chat")
    return turns[0]["content"], (turns[1]["content"] if len(turns) == 2 else None)


def plain_prompt(tokenizer, messages: list[dict], template: str) -> str:
    """The text before the answer for a non-chat template (qa, alpaca, plain)."""
    user, _ = _single_turn(messages, template)
    body = {"qa": QA.format(question=user), "alpaca": ALPACA.format(instruction=user), "plain": user}[template]
    return _bos(tokenizer) + body


def render(tokenizer, messages: list[dict], template: str, last_turn_only: bool = False) -> Rendered:
    """Render a whole training example for `template`; the span ends with EOS (or the end-of-turn marker) once."""
    if template == "chat":
        return render_chat(tokenizer, messages, last_turn_only)
    prompt = plain_prompt(tokenizer, messages, template)
    _, answer = _single_turn(messages, template)
    if answer is None:
        raise DataError("an example has no answer to learn from")
    if template == "qa" and not answer.startswith((" ", "\n")):
        answer = " " + answer  # "Answer: 42", matching how the prompt ends
    completion = answer + (tokenizer.eos_token or "")
    return Rendered(prompt + completion, [(len(prompt), len(prompt) + len(completion))])


def render_prompt(tokenizer, messages: list[dict], template: str) -> str:
    """The inference prompt: `messages` without the final answer, in the same template as training."""
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if template == "chat":
        return render_chat_prompt(tokenizer, messages)
    return plain_prompt(tokenizer, messages, template)
