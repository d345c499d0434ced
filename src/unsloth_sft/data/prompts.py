"""Prompt templates: one `render` turns a conversation into text plus the character spans the loss covers.

Training, evaluation, inference and the export check all call `render` / `render_prompt` (raw text: `text_prompt`),
so the model sees at inference exactly the prompt it was trained on, BOS included by one rule (`models.tokens`).
A conversation is a list of {"role", "content"} messages (system?, user, assistant, ...); one with tools also has
assistant `tool_calls`, `tool` results and the row's tools on its first message (data.tools), rendered through the
chat template's own `tools=`: the loss covers the assistant's calls and replies, never the tool results.
"""

from __future__ import annotations

from dataclasses import dataclass

from unsloth_sft import tasks
from unsloth_sft.config.data import DataConfig
from unsloth_sft.core.errors import DataError
from unsloth_sft.data import tools as T
from unsloth_sft.models.tokens import bos_text

ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
QA = "Question: {question}\nAnswer:"
TEXT_PROMPT_CHARS = 200  # raw text: a prompt is the opening of a document, this many characters, to continue


@dataclass
class Rendered:
    text: str  # the full text, special tokens included (tokenize with add_special_tokens=False)
    spans: list[tuple[int, int]]  # [start, end) character spans of text the loss covers


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


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
    if T.uses_tools(messages):  # the stored JSON text back to objects, and the row's tools as tools=
        messages, tools = T.template_inputs(messages)
        T.check_source(tokenizer, messages, tools)
        try:
            text = _apply(tokenizer, messages, generation, tools)
        except DataError as err:
            raise T.cannot_render(tokenizer, f"it raised: {str(err).removeprefix(REFUSED)}") from None
        T.check_rendered(tokenizer, messages, tools, text)
        return text
    return _apply(tokenizer, messages, generation)


REFUSED = "the chat template refused this conversation: "


def _apply(tokenizer, messages: list[dict], generation: bool, tools: list[dict] | None = None) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation)
    except Exception as err:  # jinja's TemplateError from raise_exception: "System role not supported"
        if messages and messages[0]["role"] == "system" and "system" in str(err).lower():
            return _apply(tokenizer, _merge_system(messages), generation, tools)
        raise DataError(f"{REFUSED}{err}") from None


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
    if not full.startswith(text):  # a later turn (a tool result) rewrote an earlier one: the spans would be wrong
        raise DataError(
            "the chat template renders a turn differently once later messages follow it; use data.template: plain"
        )
    if last_turn_only:
        spans = spans[-1:]
    return Rendered(full, spans)


def render_chat_prompt(tokenizer, messages: list[dict]) -> str:
    """The prompt for generation: every message, then the template's assistant header."""
    return _chat(tokenizer, messages, generation=True)


def _single_turn(messages: list[dict], template: str) -> tuple[str, str | None]:
    if T.uses_tools(messages):
        raise DataError(f"tool calls render through the model's chat template, not data.template {template}; use chat")
    turns = _merge_system(messages)
    if len(turns) > 2 or turns[0]["role"] != "user" or (len(turns) == 2 and turns[1]["role"] != "assistant"):
        raise DataError(f"data.template {template} takes one user message and one answer; use data.template: chat")
    return turns[0]["content"], (turns[1]["content"] if len(turns) == 2 else None)


def plain_prompt(tokenizer, messages: list[dict], template: str) -> str:
    """The text before the answer for a non-chat template (qa, alpaca, plain)."""
    user, _ = _single_turn(messages, template)
    body = {"qa": QA.format(question=user), "alpaca": ALPACA.format(instruction=user), "plain": user}[template]
    return bos_text(tokenizer) + body


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


def text_prompt(tokenizer, text: str) -> str:
    """A raw-text prompt: the text to continue, after BOS where the model expects one (as training blocks start)."""
    return bos_text(tokenizer) + text


def choose_template(task: str, cfg: DataConfig, tokenizer) -> str:
    """data.template, or the task's natural one: the chat template where the tokenizer has one."""
    if cfg.template != "auto":
        if cfg.template == "chat" and not has_chat_template(tokenizer):
            raise DataError("data.template is chat but the tokenizer has no chat template; use qa, alpaca or plain")
        return cfg.template
    record = tasks.get(task)
    if record.template != "chat":
        return record.template
    return "chat" if has_chat_template(tokenizer) else record.fallback


def shot_prefix(tokenizer, example: list[dict], template: str) -> list[dict] | str:
    """One worked example for the base model's prompt: messages for chat templates, text for plain ones."""
    if template == "chat":
        return [m for m in example if m["role"] != "system"][:2]
    text = render(tokenizer, example, template).text
    return text[: len(text) - len(tokenizer.eos_token or "")] + "\n\n"


def prompts_for(tokenizer, conversations: list[list[dict]], template: str, shot: list[dict] | None = None) -> list[str]:
    """Inference prompts for test conversations (optionally one-shot), from the same template as training."""
    out = []
    for conv in conversations:
        if shot is None:
            out.append(render_prompt(tokenizer, conv, template))
        elif template == "chat":
            out.append(render_prompt(tokenizer, shot_prefix(tokenizer, shot, template) + conv, template))
        else:
            prompt = render_prompt(tokenizer, conv, template)
            bos = bos_text(tokenizer)
            body = prompt[len(bos) :]
            prefix = shot_prefix(tokenizer, shot, template)
            out.append(prefix + body)  # the shot keeps its <bos>; the prompt's own is dropped
    return out
