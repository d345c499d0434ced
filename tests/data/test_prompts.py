"""Tests for unsloth_sft.data.prompts on the tiny Gemma-2 tokenizer (Gemma's chat template: no system role)."""

from __future__ import annotations

import pytest

from unsloth_sft.core.errors import DataError, SFTError
from unsloth_sft.data.prompts import ALPACA, has_chat_template, plain_prompt, render, render_chat, render_prompt
from unsloth_sft.models.tokens import stop_token_ids

EOT = "<end_of_turn>"


def conv(*turns: str, system: str | None = None) -> list[dict]:
    """user, assistant, user, assistant, ... (an odd count ends on a user turn)."""
    msgs = [{"role": "system", "content": system}] if system is not None else []
    for i, text in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return msgs


def data_error(fn, *args) -> str:
    with pytest.raises(DataError) as info:
        fn(*args)
    assert isinstance(info.value, SFTError)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- chat template


def test_tokenizer_has_gemma_chat_template(tokenizer):
    assert has_chat_template(tokenizer)
    assert tokenizer.bos_token == "<bos>" and tokenizer.eos_token == "<eos>"


def test_chat_render_single_turn(tokenizer):
    messages = conv("What is 2 + 2?", "It is 4.")
    r = render(tokenizer, messages, "chat")
    assert r.text.startswith("<bos>")
    assert r.text.count("<bos>") == 1
    assert len(r.spans) == 1
    s, e = r.spans[0]
    assert r.text[s:e] == "It is 4." + EOT
    assert r.text[:s].endswith("<start_of_turn>model\n")
    assert r.text == (
        "<bos><start_of_turn>user\nWhat is 2 + 2?<end_of_turn>\n<start_of_turn>model\nIt is 4.<end_of_turn>\n"
    )


def test_chat_render_prompt_is_prefix(tokenizer):
    messages = conv("What is 2 + 2?", "It is 4.")
    r = render(tokenizer, messages, "chat")
    prompt = render_prompt(tokenizer, messages, "chat")
    assert r.text.startswith(prompt)
    assert prompt.endswith("<start_of_turn>model\n")
    assert prompt.count("<bos>") == 1
    assert len(prompt) == r.spans[0][0]  # the span starts exactly where generation starts
    # The prompt of a conversation that ends on the user turn is the same text.
    assert render_prompt(tokenizer, messages[:-1], "chat") == prompt


def test_chat_render_tokenizes_with_one_bos(tokenizer):
    r = render(tokenizer, conv("Hello", "Hi!"), "chat")
    ids = tokenizer(r.text, add_special_tokens=False).input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1


def test_chat_hindi(tokenizer):
    answer = "ग्राहक ने रिफ़ंड माँगा।"
    r = render(tokenizer, conv("इस बातचीत का सारांश लिखें।", answer), "chat")
    s, e = r.spans[0]
    assert r.text[s:e] == answer + EOT


def test_system_message_merged_into_first_user_turn(tokenizer):
    # Gemma's template raises on a system role; render merges it instead of failing.
    with pytest.raises(Exception, match="System role not supported"):
        tokenizer.apply_chat_template(conv("Hi", "Hello", system="Be brief."), tokenize=False)
    r = render(tokenizer, conv("Hi", "Hello", system="Be brief."), "chat")
    assert "<start_of_turn>system" not in r.text
    assert "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>" in r.text
    assert r.text.count("<bos>") == 1
    s, e = r.spans[0]
    assert r.text[s:e] == "Hello" + EOT
    prompt = render_prompt(tokenizer, conv("Hi", "Hello", system="Be brief."), "chat")
    assert r.text.startswith(prompt) and "Be brief.\n\nHi" in prompt


def test_empty_system_message_is_dropped(tokenizer):
    with_empty = render(tokenizer, conv("Hi", "Hello", system=""), "chat")
    without = render(tokenizer, conv("Hi", "Hello"), "chat")
    assert with_empty == without


def test_system_without_user_is_refused(tokenizer):
    msgs = [{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}]
    msg = data_error(render, tokenizer, msgs, "chat")
    assert "system" in msg and "user" in msg


def test_multi_turn_one_span_per_assistant_turn(tokenizer):
    answers = ["First answer.", "Second answer.", "Third answer."]
    messages = conv("q1", answers[0], "q2", answers[1], "q3", answers[2], system="Sys")
    r = render(tokenizer, messages, "chat")
    assert [r.text[s:e] for s, e in r.spans] == [a + EOT for a in answers]
    assert r.text.count("<bos>") == 1
    # Spans are increasing and disjoint, with a user turn between them.
    for (_s1, e1), (s2, _e2) in zip(r.spans, r.spans[1:]):
        assert e1 < s2
        assert "<start_of_turn>user\n" in r.text[e1:s2]


def test_last_turn_only(tokenizer):
    messages = conv("q1", "A one.", "q2", "A two.")
    full = render(tokenizer, messages, "chat")
    last = render(tokenizer, messages, "chat", last_turn_only=True)
    assert last.text == full.text
    assert last.spans == full.spans[-1:]
    s, e = last.spans[0]
    assert last.text[s:e] == "A two." + EOT


def test_multi_turn_prompt_ends_before_last_answer(tokenizer):
    messages = conv("q1", "A one.", "q2", "A two.")
    r = render(tokenizer, messages, "chat")
    prompt = render_prompt(tokenizer, messages, "chat")
    assert prompt == r.text[: r.spans[-1][0]]
    assert "A one." in prompt and "A two." not in prompt


def test_chat_content_is_trimmed_by_template(tokenizer):
    r = render(tokenizer, conv("  q  ", "  padded answer \n"), "chat")
    s, e = r.spans[0]
    assert r.text[s:e] == "padded answer" + EOT


def test_chat_without_assistant_is_refused(tokenizer):
    assert "assistant" in data_error(render_chat, tokenizer, conv("only a question"))


def test_chat_roles_must_alternate(tokenizer):
    msgs = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]
    assert "chat template" in data_error(render, tokenizer, msgs, "chat")


def test_chat_needs_a_chat_template(tokenizer):
    class NoTemplate:
        chat_template = None

    assert "data.template" in data_error(render_chat, NoTemplate(), conv("q", "a"))


# ---------------------------------------------------------------- single-turn templates


def test_qa_template(tokenizer):
    r = render(tokenizer, conv("What is 2 + 2?", "4"), "qa")
    assert r.text == "<bos>Question: What is 2 + 2?\nAnswer: 4<eos>"
    s, e = r.spans[0]
    assert r.text[s:e] == " 4<eos>"
    assert r.text.count("<eos>") == 1 and r.text.count("<bos>") == 1
    prompt = render_prompt(tokenizer, conv("What is 2 + 2?", "4"), "qa")
    assert prompt == "<bos>Question: What is 2 + 2?\nAnswer:"
    assert r.text.startswith(prompt) and len(prompt) == s


def test_qa_answer_with_leading_space_is_not_doubled(tokenizer):
    r = render(tokenizer, conv("q?", " already spaced"), "qa")
    assert r.text.endswith("Answer: already spaced<eos>")
    r = render(tokenizer, conv("q?", "\nnext line"), "qa")
    assert r.text.endswith("Answer:\nnext line<eos>")


def test_qa_with_system_prompt(tokenizer):
    r = render(tokenizer, conv("q?", "a", system="Context."), "qa")
    assert r.text == "<bos>Question: Context.\n\nq?\nAnswer: a<eos>"


def test_alpaca_template(tokenizer):
    r = render(tokenizer, conv("Say hi.", "Hi!"), "alpaca")
    prompt = "<bos>" + ALPACA.format(instruction="Say hi.")
    assert r.text == prompt + "Hi!<eos>"
    assert prompt.endswith("### Response:\n")
    s, e = r.spans[0]
    assert (s, r.text[s:e]) == (len(prompt), "Hi!<eos>")
    assert render_prompt(tokenizer, conv("Say hi.", "Hi!"), "alpaca") == prompt
    assert r.text.count("<eos>") == 1 and r.text.count("<bos>") == 1


def test_plain_template(tokenizer):
    r = render(tokenizer, conv("The capital of Italy is", " Rome."), "plain")
    assert r.text == "<bos>The capital of Italy is Rome.<eos>"
    s, e = r.spans[0]
    assert r.text[s:e] == " Rome.<eos>"
    assert render_prompt(tokenizer, conv("The capital of Italy is", " Rome."), "plain") == r.text[:s]
    assert plain_prompt(tokenizer, conv("x"), "plain") == "<bos>x"


@pytest.mark.parametrize("template", ["qa", "alpaca", "plain"])
def test_eos_appended_exactly_once(tokenizer, template):
    r = render(tokenizer, conv("q", "answer"), template)
    assert r.text.endswith("answer<eos>")
    assert r.text.count("<eos>") == 1
    assert r.spans[0][1] == len(r.text)
    ids = tokenizer(r.text, add_special_tokens=False).input_ids
    assert ids.count(tokenizer.eos_token_id) == 1 and ids[-1] == tokenizer.eos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id


@pytest.mark.parametrize("template", ["qa", "alpaca", "plain"])
def test_single_turn_templates_refuse_multi_turn(tokenizer, template):
    msg = data_error(render, tokenizer, conv("q1", "a1", "q2", "a2"), template)
    assert template in msg and "chat" in msg
    data_error(render_prompt, tokenizer, conv("q1", "a1", "q2", "a2"), template)


@pytest.mark.parametrize("template", ["qa", "alpaca", "plain"])
def test_single_turn_templates_refuse_assistant_first(tokenizer, template):
    data_error(render, tokenizer, [{"role": "assistant", "content": "a"}], template)


@pytest.mark.parametrize("template", ["qa", "alpaca", "plain"])
def test_single_turn_without_answer(tokenizer, template):
    assert "answer" in data_error(render, tokenizer, conv("q"), template)


# ---------------------------------------------------------------- stop tokens


def test_stop_token_ids(tokenizer):
    ids = stop_token_ids(tokenizer)
    assert tokenizer.eos_token_id in ids
    assert tokenizer.convert_tokens_to_ids(EOT) in ids
    assert tokenizer.convert_tokens_to_ids("<start_of_turn>") in ids  # a reply never opens the next turn
    assert ids[0] == tokenizer.eos_token_id and len(ids) == len(set(ids))
    assert set(ids) == set(tokenizer.all_special_ids)  # every control token ends a reply; text tokens never do


def test_stop_token_ids_without_end_of_turn():
    class Tok:  # the slice of a tokenizer's API stop_token_ids uses; unknown tokens map to <unk> as HF's do
        eos_token_id = 7
        vocab = {"<eos>": 7, "<unk>": 0}

        def convert_tokens_to_ids(self, token):
            return self.vocab.get(token, 0)

        def convert_ids_to_tokens(self, i):
            return {v: k for k, v in self.vocab.items()}[i]

    assert stop_token_ids(Tok()) == [7]

    class ChatML(Tok):
        vocab = {"<|im_end|>": 7, "<|im_start|>": 1, "x": 3, "<unk>": 0}

    assert stop_token_ids(ChatML()) == [7, 1]


@pytest.mark.parametrize("template", ["chat", "qa"])
def test_one_shot_prompt_puts_a_worked_example_first(tokenizer, template):
    """eval.num_shots: 1 (GSM8K's base model): the shot's question and answer come before the test question,
    with one <bos> and the same ending as the zero-shot prompt."""
    from unsloth_sft.data.prompts import prompts_for

    shot = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4\n#### 4"}]
    test = [{"role": "user", "content": "What is 3 + 5?"}, {"role": "assistant", "content": "#### 8"}]
    zero = prompts_for(tokenizer, [test], template)[0]
    one = prompts_for(tokenizer, [test], template, shot)[0]
    assert one.count("<bos>") == 1 and one.startswith("<bos>")
    assert one.index("What is 2 + 2?") < one.index("#### 4") < one.index("What is 3 + 5?")
    assert one.endswith(zero[len("<bos>") :]) and "#### 8" not in one
