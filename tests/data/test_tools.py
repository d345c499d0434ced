"""Tool-call chat data: `tools` rows, assistant `tool_calls`, `tool` results, rendered by the model's own chat template
with tools=, the loss on the assistant's calls and replies only; bad shapes refused with their row."""

from __future__ import annotations

import json

import pytest

from tests.conftest import small_config
from unsloth_sft.core.errors import DataError

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>'
REPLY = "It is -3 °C in Oslo, with snow.<|im_end|>"


def openai_row(**over) -> dict:
    """One conversation in OpenAI's export shape: arguments as JSON text, the result tied by tool_call_id."""
    row = {
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": '{"temperature": -3, "conditions": "snow"}'},
            {"role": "assistant", "content": "It is -3 °C in Oslo, with snow."},
        ],
        "tools": [WEATHER],
    }
    row.update(over)
    return row


@pytest.fixture(scope="module")
def chatml_tools(tiny_path):
    """The tiny tokenizer with ChatML's turn tokens and the shipped chatml-tools template (model.chat_template)."""
    from transformers import AutoTokenizer

    from unsloth_sft.models.chat_templates import set_chat_template

    tok = AutoTokenizer.from_pretrained(tiny_path)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    set_chat_template(tok, "chatml-tools", "transformers")
    return tok


def write_rows(tmp_path, rows: list) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tools.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def conversation(tmp_path, row: dict) -> list[dict]:
    from unsloth_sft.data.examples import load_examples

    cfg = small_config(tmp_path, f"data.source={write_rows(tmp_path, [row, row])}", "data.test_size=0")
    return load_examples(cfg).train_conversations[0]


def test_loss_covers_the_calls_and_replies_token_by_token(tmp_path, chatml_tools):
    """Every token is trained exactly when it belongs to an assistant turn (the call, the reply, their <|im_end|>);
    the tool list, the user's message and the tool's result are all masked."""
    from unsloth_sft.config.data import DataConfig
    from unsloth_sft.data.preview import mark_trained
    from unsloth_sft.data.prompts import render
    from unsloth_sft.data.tokenize import tokenize

    conv = conversation(tmp_path, openai_row())
    tokens, _ = tokenize(chatml_tools, [conv], "chat", DataConfig(), 4096)
    ids, labels = tokens["input_ids"][0], tokens["labels"][0]
    rendered = render(chatml_tools, conv, "chat")
    assert [rendered.text[a:b] for a, b in rendered.spans] == [CALL, REPLY]
    assert chatml_tools(rendered.text, add_special_tokens=False).input_ids == ids  # pieces tokenize as the whole
    at, trained_text = 0, []
    for tok, lab in zip(ids, labels):
        piece = chatml_tools.decode([tok])
        start = rendered.text.index(piece, at)
        inside = any(a <= start < b for a, b in rendered.spans)
        assert (lab != -100) == inside and lab in (-100, tok), (start, piece)
        trained_text += [piece] if inside else []
        at = start + len(piece)
    assert "".join(trained_text) == CALL + REPLY
    marked = mark_trained(chatml_tools, ids, labels)
    assert f"[[{CALL}]]" in marked and f"[[{REPLY}]]" in marked and marked.count("[[") == 2
    assert '<tool_response>\n{"temperature": -3, "conditions": "snow"}\n</tool_response>' in marked
    assert '"name": "get_weather"' in marked.split("[[")[0]  # the tool list is in the prompt, untrained


def test_export_shapes_render_the_same_calls(tmp_path, chatml_tools):
    """OpenAI (arguments as text), transformers/Hermes (an object), xLAM ({name, arguments}), ShareGPT's `tool`
    speaker, tools as JSON text under OpenAI's older `functions` column: one rendering."""
    from unsloth_sft.data.prompts import render

    want = render(chatml_tools, conversation(tmp_path / "a", openai_row()), "chat").text
    hermes = openai_row()
    hermes["messages"][1]["tool_calls"] = [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    ]
    xlam = openai_row(tools=json.dumps([WEATHER["function"]]))
    xlam["messages"][1]["tool_calls"] = [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    sharegpt = {
        "conversations": [
            {"from": "human", "value": "Weather in Oslo?"},
            {"from": "gpt", "value": "", "tool_calls": hermes["messages"][1]["tool_calls"]},
            {"from": "tool", "value": '{"temperature": -3, "conditions": "snow"}'},
            {"from": "gpt", "value": "It is -3 °C in Oslo, with snow."},
        ],
        "functions": [WEATHER],
    }
    for name, row in (("hermes", hermes), ("xlam", xlam)):
        assert render(chatml_tools, conversation(tmp_path / name, row), "chat").text == want, name
    got = render(chatml_tools, conversation(tmp_path / "sharegpt", sharegpt), "chat").text
    assert got == want


def test_template_without_tools_is_refused_naming_it(tmp_path, tokenizer):
    """The tiny model's Gemma template never reads tools: one line naming the template's model and the fix."""
    from unsloth_sft.data.examples import prepare

    cfg = small_config(tmp_path, f"data.source={write_rows(tmp_path, [openai_row()] * 3)}", "data.test_size=0")
    with pytest.raises(DataError) as err:
        prepare(cfg, tokenizer)
    text = str(err.value)
    assert "tools.jsonl line 1" in text and tokenizer.name_or_path in text and "chatml-tools" in text
    assert "never reads `tools`" in text and "\n" not in text


def test_templates_that_raise_or_drop_the_calls_are_refused(tmp_path, chatml_tools):
    """A template naming tools that raises on them, or renders without the call: refused, not trained silently."""
    from unsloth_sft.data.prompts import render

    conv = conversation(tmp_path, openai_row())
    tok = chatml_tools
    kept = tok.chat_template
    try:
        tok.chat_template = "{% if tools %}{{ raise_exception('no tool_calls here') }}{% endif %}"
        with pytest.raises(DataError, match="it raised: no tool_calls here"):
            render(tok, conv, "chat")
        tok.chat_template = (
            "{# tools tool_calls #}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        )
        with pytest.raises(DataError, match="'get_weather' is missing from what it renders"):
            render(tok, conv, "chat")
    finally:
        tok.chat_template = kept
    with pytest.raises(DataError, match="not data.template qa; use chat"):
        render(tok, conv, "qa")


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda r: r["messages"][1].update(tool_calls={"name": "x"}), r"messages\[1\].tool_calls must be a list"),
        (lambda r: r["messages"][1]["tool_calls"][0]["function"].pop("name"), r"tool_calls\[0\] has no function name"),
        (lambda r: r["messages"][1]["tool_calls"][0]["function"].update(arguments="{city"), "is text but not JSON"),
        (lambda r: r["messages"][1]["tool_calls"][0]["function"].update(arguments="[1]"), "must be an object"),
        (lambda r: r["messages"][0].update(tool_calls=[]), "only assistant messages call tools"),
        (lambda r: r["messages"].insert(1, r["messages"].pop(2)), r"messages\[1\] is a tool result that follows no"),
        (lambda r: r["messages"][2].pop("content"), "tool result with no 'content'"),
        (lambda r: r.update(tools={"name": "get_weather"}), "'tools' must be a list of JSON schemas"),
        (lambda r: r.update(tools=[{"description": "no name"}]), r"tools\[0\] must be"),
    ],
)
def test_bad_shapes_are_refused_with_their_row(tmp_path, change, words):
    """A broken row among good ones: one line naming the file, the line and the message, before a model loads."""
    from unsloth_sft.data.examples import load_examples

    bad = openai_row()
    change(bad)
    cfg = small_config(tmp_path, f"data.source={write_rows(tmp_path, [openai_row(), bad, openai_row()])}")
    with pytest.raises(DataError, match=words) as err:
        load_examples(cfg)
    assert "tools.jsonl line 2:" in str(err.value) and "\n" not in str(err.value)


def test_a_conversation_of_calls_only_is_kept_and_rows_without_tools_pass(tmp_path):
    """An answer that is only a call is something to learn (not an empty answer); plain rows stay as they were."""
    row = openai_row()
    row["messages"] = row["messages"][:2]
    conv = conversation(tmp_path / "calls", row)
    assert conv[-1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert json.loads(conv[0]["tools"]) == [WEATHER]
    plain = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    assert conversation(tmp_path / "plain", plain) == plain["messages"]


def test_bundled_sample_and_recipe_train_through_chatml_tools(tmp_path, chatml_tools):
    """sample:tool-calls loads (40 train, 8 test, every row with tools), preview marks the calls and says what is
    trained, and the recipe names the shipped template."""
    from unsloth_sft.config.load import load_config
    from unsloth_sft.data.examples import load_examples
    from unsloth_sft.data.preview import preview

    cfg = small_config(tmp_path, "data.source=sample:tool-calls", "data.task=chat", "model.max_seq_length=1024")
    examples = load_examples(cfg)
    assert len(examples.train_conversations) == 40 and len(examples.test_conversations) == 8
    assert all("tools" in c[0] for c in examples.train_conversations)
    text = preview(cfg, n=40, tokenizer=chatml_tools)
    assert "tool calls: 40 of 40 examples use tools" in text and "[[<tool_call>" in text
    assert "0 of 40 examples cut" in text
    recipe = load_config("params/cpu/smollm2-135m-tools.yaml")
    assert recipe.model.chat_template == "chatml-tools" and recipe.data.source == "sample:tool-calls"


def test_chatml_tools_is_a_named_template(tokenizer):
    """model.chat_template: chatml-tools is found by name (listed when a name is unknown); its Hermes tags are text,
    while a turn marker the tokenizer lacks is still refused."""
    from unsloth_sft.core.errors import ConfigError, ModelError
    from unsloth_sft.models.chat_templates import check_markers, template_text

    assert "tools" in template_text("chatml-tools", "transformers")
    with pytest.raises(ConfigError, match="chatml-tools"):
        template_text("no-such-template", "transformers")
    with pytest.raises(ModelError, match=r"<\|im_start\|>"):
        check_markers(tokenizer, template_text("chatml-tools", "transformers"), "chatml-tools")
    check_markers(tokenizer, "<start_of_turn>user\n<tool_call>{}</tool_call><end_of_turn>", "mine")


def test_modelfile_of_a_tools_template_says_what_ollama_renders(chatml_tools):
    """Ollama's TEMPLATE for a chatml-tools run is ChatML's turns; the Modelfile says tools need llama.cpp's server."""
    from unsloth_sft.config.run import EvalConfig
    from unsloth_sft.export.modelfile import CHATML_TEMPLATE, modelfile

    text = modelfile("m.gguf", chatml_tools, "chat", EvalConfig())
    assert "# TEMPLATE renders the chat turns only, not tools" in text and CHATML_TEMPLATE in text
