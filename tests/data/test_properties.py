"""Property tests: config round trips, and the trained span of every formatter is exactly the answer."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from unsloth_sft.config.data import DataConfig
from unsloth_sft.config.load import load_config, save_config
from unsloth_sft.data.prompts import render_prompt
from unsloth_sft.data.tokenize import tokenize

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SPECIAL = ("<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>", "<unk>")
EOT, EOS = "<end_of_turn>", "<eos>"

# ---------------------------------------------------------------- config

# Any text, NEL (U+0085) and the Unicode line separators included: save_config escapes them.
ANY_TEXT = st.characters(blacklist_categories=("Cs",))
SAFE_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20)
VALID = {
    "run_name": SAFE_NAME,
    "train.max_steps": st.integers(min_value=1, max_value=10**6),
    "train.learning_rate": st.floats(min_value=1e-9, max_value=10.0, allow_nan=False, allow_infinity=False),
    "train.packing": st.booleans(),
    "train.seed": st.integers(min_value=0, max_value=2**31),
    "train.warmup_steps": st.integers(min_value=0, max_value=1000),
    "train.weight_decay": st.floats(min_value=0, max_value=1, allow_nan=False),
    "train.report_to": st.lists(st.sampled_from(["none", "tensorboard", "wandb"]), min_size=1, max_size=3),
    "lora.r": st.integers(min_value=1, max_value=256),
    "lora.dropout": st.floats(min_value=0, max_value=0.99),
    "lora.target_modules": st.lists(SAFE_NAME, min_size=1, max_size=4),
    "data.source": SAFE_NAME.map(lambda s: f"sample:{s}"),
    "data.system_prompt": st.none() | st.text(ANY_TEXT, max_size=40),
    "data.instruction": st.none() | st.text(ANY_TEXT, max_size=40),
    "data.columns": st.dictionaries(
        st.sampled_from(["dialogue", "summary", "question"]), st.text(ANY_TEXT, min_size=1, max_size=10)
    ),
    "data.test_size": st.sampled_from([0, 0.1, 0.5, 3, 10]),
    "model.max_seq_length": st.integers(min_value=1, max_value=1 << 20),
    "eval.temperature": st.floats(min_value=0.01, max_value=5),
    "eval.num_shots": st.sampled_from([0, 1]),
    "export.push_to_hub": st.none() | st.tuples(SAFE_NAME, SAFE_NAME).map("/".join),
    "export.save_methods": st.lists(
        st.sampled_from(["lora", "merged_16bit", "merged_4bit_forced", "gguf"]), min_size=1
    ),
}


@st.composite
def valid_overrides(draw) -> dict:
    keys = draw(st.lists(st.sampled_from(sorted(VALID)), unique=True, max_size=len(VALID)))
    return {k: draw(VALID[k]) for k in keys}


def lookup(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


@SETTINGS
@given(overrides=valid_overrides())
def test_config_round_trips_through_yaml(tmp_path, overrides):
    cfg = load_config(overrides=overrides)
    for key, value in overrides.items():  # what was given is what the config holds
        assert lookup(cfg, key) == value
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    assert load_config(path).to_dict() == cfg.to_dict()


@SETTINGS
@given(steps=st.integers(min_value=1, max_value=10**9), name=SAFE_NAME, packing=st.booleans())
def test_string_overrides_parse_like_typed_ones(steps, name, packing):
    # Names such as "1e5", "007" or "true" would be YAML-typed; tuples keep them as text.
    cfg = load_config(
        overrides=[f"train.max_steps={steps}", f"train.packing={str(packing).lower()}", ("run_name", name)]
    )
    assert (cfg.train.max_steps, cfg.train.packing, cfg.run_name) == (steps, packing, name)


@SETTINGS
@given(lr=st.floats(min_value=1e-9, max_value=10.0))
@example(lr=1e-05)
def test_float_override_as_python_prints_it(lr):
    assert load_config(overrides=[f"train.learning_rate={lr!r}"]).train.learning_rate == lr


# ---------------------------------------------------------------- formatters

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(
    lambda s: s.strip() == s and not any(tok in s for tok in SPECIAL)
)


def trained_runs(tokenizer, ids, labels) -> list[str]:
    runs, cur = [], []
    for tok, lab in zip(ids, labels):
        if lab != -100:
            cur.append(tok)
        elif cur:
            runs.append(tokenizer.decode(cur))
            cur = []
    if cur:
        runs.append(tokenizer.decode(cur))
    return runs


def tokenized(tokenizer, conv, template, **cfg):
    tokens, truncated = tokenize(tokenizer, [conv], template, DataConfig(**cfg), 10**6)
    assert truncated == 0
    ids, labels = tokens["input_ids"][0], tokens["labels"][0]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    return ids, labels


def chat_conv(pairs, system):
    conv = [{"role": "system", "content": system}] if system is not None else []
    for user, answer in pairs:
        conv += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return conv


@SETTINGS
@given(
    pairs=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=3),
    system=st.none() | st.just("") | TEXT,
    last_turn_only=st.booleans(),
)
def test_chat_trained_spans_are_exactly_the_answers(tokenizer, pairs, system, last_turn_only):
    conv = chat_conv(pairs, system)
    ids, labels = tokenized(tokenizer, conv, "chat", last_turn_only=last_turn_only)
    expected = [answer + EOT for _, answer in pairs]
    assert trained_runs(tokenizer, ids, labels) == (expected[-1:] if last_turn_only else expected)
    # The inference prompt encodes to exactly the tokens before the last answer.
    prompt = render_prompt(tokenizer, conv, "chat")
    n = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    assert ids[:n] == tokenizer(prompt, add_special_tokens=False).input_ids
    assert labels[n] != -100 and labels[n - 1] == -100


@SETTINGS
@given(question=TEXT, answer=TEXT, system=st.none() | st.just("") | TEXT)
def test_qa_trained_span_is_exactly_the_answer(tokenizer, question, answer, system):
    conv = chat_conv([(question, answer)], system)
    ids, labels = tokenized(tokenizer, conv, "qa")
    assert trained_runs(tokenizer, ids, labels) == [" " + answer + EOS]
    prompt = render_prompt(tokenizer, conv, "qa")
    assert tokenizer.decode([t for t, lab in zip(ids, labels) if lab == -100]) == prompt


@SETTINGS
@given(instruction=TEXT, answer=TEXT)
def test_alpaca_trained_span_is_exactly_the_answer(tokenizer, instruction, answer):
    ids, labels = tokenized(tokenizer, chat_conv([(instruction, answer)], None), "alpaca")
    assert trained_runs(tokenizer, ids, labels) == [answer + EOS]


@SETTINGS
@given(prompt=TEXT, completion=TEXT)
def test_plain_trained_span_with_space_separated_completion(tokenizer, prompt, completion):
    # TRL's prompt/completion convention: the completion starts with a space.
    ids, labels = tokenized(tokenizer, chat_conv([(prompt, " " + completion)], None), "plain")
    assert trained_runs(tokenizer, ids, labels) == [" " + completion + EOS]


@SETTINGS
@given(prompt=TEXT, completion=TEXT)
@example(prompt="0", completion="0")
def test_plain_trained_span_is_exactly_the_completion(tokenizer, prompt, completion):
    ids, labels = tokenized(tokenizer, chat_conv([(prompt, completion)], None), "plain")
    assert trained_runs(tokenizer, ids, labels) == [completion + EOS]
    # And the inference prompt encodes to the tokens training saw before the completion.
    prompt_ids = tokenizer(
        render_prompt(tokenizer, chat_conv([(prompt, completion)], None), "plain"), add_special_tokens=False
    ).input_ids
    assert ids[: len(prompt_ids)] == prompt_ids
