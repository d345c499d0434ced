"""Tool-call conversations: the tools a row offers (JSON schemas), assistant `tool_calls`, `tool` results.

Accepted shapes: OpenAI's fine-tuning export (`{id, type: function, function: {name, arguments: "<JSON>"}}`,
`{role: tool, tool_call_id, content}`), transformers' / Hermes' (`arguments` an object, `{role: tool, name,
content}`) and xLAM's answers (`{name, arguments}`). A conversation keeps them as JSON text (the row's tools on
its first message, each call's arguments), one type per field as Arrow tables want; `template_inputs` turns them
back into the objects `apply_chat_template(messages, tools=...)` takes.
"""

from __future__ import annotations

import json
from typing import Any

from unsloth_sft.core.errors import DataError

TOOLS = "tools"  # key on a conversation's first message: the row's tool schemas, as JSON text
CALL_SHAPE = "{type: function, function: {name, arguments}} or {name, arguments}"
SCHEMA_SHAPE = "{type: function, function: {name, description, parameters}} or {name, description, parameters}"


def _json(value: Any, where: str, what: str) -> Any:
    """`value`, or the object a JSON text holds (exports keep arguments and tools as text)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{where}: {what} is text but not JSON ({err.msg} at column {err.colno}); fix the row"
        ) from None


def _text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)  # key order kept: the template shows the schema as written


def tool_call(call: Any, where: str, at: str) -> dict:
    """One call in the stored form: {type: function, function: {name, arguments: JSON text}} (+ id when given)."""
    if isinstance(call, dict) and call.get("type", "function") == "function" and isinstance(call.get("function"), dict):
        body = call["function"]
    elif isinstance(call, dict) and "name" in call:
        body = call
    else:
        raise DataError(f"{where}: {at} must be {CALL_SHAPE}, got {str(call)[:80]}")
    name, arguments = body.get("name"), _json(body.get("arguments", {}), where, f"{at}.arguments")
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{where}: {at} has no function name; give it function.name")
    if not isinstance(arguments, dict):
        raise DataError(f"{where}: {at}.arguments must be an object of argument values, got {type(arguments).__name__}")
    out = {"type": "function", "function": {"name": name, "arguments": _text(arguments)}}
    if call.get("id") is not None:
        out["id"] = str(call["id"])
    return out


def tool_message(m: Any, where: str, at: str) -> dict:
    """An assistant message with `tool_calls` (content may be empty) or a `tool` result, checked and stored."""
    if m.get("role") == "tool":
        content = m.get("content")
        if content is None:
            raise DataError(f"{where}: {at} is a tool result with no 'content'; put the tool's output there")
        out = {"role": "tool", "content": content if isinstance(content, str) else _text(content)}
        for key in ("name", "tool_call_id"):
            if m.get(key) is not None:
                out[key] = str(m[key])
        return out
    if m.get("role") != "assistant":
        raise DataError(f"{where}: {at} has tool_calls but role '{m.get('role')}'; only assistant messages call tools")
    calls = m["tool_calls"]
    if not isinstance(calls, list):
        raise DataError(f"{where}: {at}.tool_calls must be a list of {CALL_SHAPE}, got {type(calls).__name__}")
    content = m.get("content") or ""
    if not isinstance(content, str):
        raise DataError(f"{where}: {at}.content must be text, got {type(content).__name__}")
    return {
        "role": "assistant",
        "content": content,
        "tool_calls": [tool_call(c, where, f"{at}.tool_calls[{j}]") for j, c in enumerate(calls)],
    }


def is_tool_message(m: Any) -> bool:
    return isinstance(m, dict) and (m.get("role") == "tool" or "tool_calls" in m)


def tool_schemas(value: Any, where: str, col: str = TOOLS) -> list[dict]:
    """The row's tools as transformers takes them: [{type: function, function: {name, description, parameters}}]."""
    value = _json(value, where, f"'{col}'")
    if not isinstance(value, list):
        raise DataError(f"{where}: '{col}' must be a list of JSON schemas ({SCHEMA_SHAPE}), got {type(value).__name__}")
    out = []
    for i, tool in enumerate(value):
        body = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
        body = body if isinstance(body, dict) else tool
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"].strip():
            raise DataError(f"{where}: {col}[{i}] must be {SCHEMA_SHAPE}, with a name")
        if not isinstance(body.get("parameters", {}), dict):
            raise DataError(f"{where}: {col}[{i}].parameters must be a JSON schema object")
        out.append({"type": "function", "function": body})
    return out


def attach_tools(messages: list[dict], value: Any, where: str, col: str = TOOLS) -> list[dict]:
    """The conversation with the row's tools on its first message (JSON text); unchanged when the row has none."""
    if value is None or value == "" or value == []:
        return messages
    first = {**messages[0], TOOLS: _text(tool_schemas(value, where, col))}
    return [first, *messages[1:]]


def check_calls(messages: list[dict], where: str, col: str = "messages") -> None:
    """A tool result answers a call: it follows an assistant message (its tool_calls, or Hermes' <tool_call> text)
    or another result."""
    for i, m in enumerate(messages):
        if m["role"] == "tool" and (i == 0 or messages[i - 1]["role"] not in ("assistant", "tool")):
            raise DataError(
                f"{where}: {col}[{i}] is a tool result that follows no tool call; put the assistant message that "
                "calls the tool before it"
            )


def uses_tools(messages: list[dict]) -> bool:
    return any(TOOLS in m or is_tool_message(m) for m in messages)


def template_inputs(messages: list[dict]) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools) for apply_chat_template: JSON text back to objects, empty (None) fields left out."""
    tools = None
    out = []
    for m in messages:
        m = {k: v for k, v in m.items() if v is not None}
        if TOOLS in m:
            tools = json.loads(m.pop(TOOLS))
        if m.get("tool_calls"):
            m["tool_calls"] = [
                {
                    **{k: v for k, v in c.items() if v is not None and k != "function"},
                    "function": {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])},
                }
                for c in m["tool_calls"]
            ]
        else:
            m.pop("tool_calls", None)
        out.append(m)
    return out, tools


def template_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or "this tokenizer"


def cannot_render(tokenizer, why: str) -> DataError:
    """The one-line refusal for a template without tool support: which template, and the fix."""
    return DataError(
        f"the chat template of {template_name(tokenizer)} cannot render tool calls ({why}); set model.chat_template: "
        "chatml-tools (ChatML with Hermes-style tool calls, for ChatML models) or a .jinja template that takes "
        "tools= and tool_calls, or use a model whose template does"
    )


def check_source(tokenizer, messages: list[dict], tools: list[dict] | None) -> None:
    """Before rendering: a template that never reads `tools` (or `tool_calls`) would drop them silently."""
    source = getattr(tokenizer, "chat_template", None) or ""
    if not isinstance(source, str):
        source = json.dumps(source)
    if tools and "tools" not in source:
        raise cannot_render(tokenizer, "its source never reads `tools`")
    if any(m.get("tool_calls") for m in messages) and "tool_calls" not in source:
        raise cannot_render(tokenizer, "its source never reads a message's `tool_calls`")


def check_rendered(tokenizer, messages: list[dict], tools: list[dict] | None, text: str) -> None:
    """After rendering: every tool's and every call's function name is in the text (else the template lost it)."""
    names = [t["function"]["name"] for t in tools or []]
    names += [c["function"]["name"] for m in messages for c in m.get("tool_calls") or []]
    lost = next((n for n in names if n not in text), None)
    if lost is not None:
        raise cannot_render(tokenizer, f"the function name '{lost}' is missing from what it renders")
