"""Tasks as data: the built-in records, and a new task added as one record working through data, render, eval,
infer and the model card without touching another module."""

from __future__ import annotations

import json

import pytest

from tests.conftest import small_config
from unsloth_sft import tasks
from unsloth_sft.core.errors import ConfigError, DataError


def chrf_only(predictions: list[str], references: list[str]) -> dict[str, float]:
    from unsloth_sft.tasks.metrics import sacrebleu_scores

    return {"chrf++": sacrebleu_scores(predictions, references)["chrf++"]}


TRANSLATION = tasks.Task(  # the README's "Extending: add a task" record
    "translation",
    fields=("source", "target"),
    answer="target",
    aliases={"source": ("english",), "target": ("french",)},
    detect=5,  # tried before every built-in task
    prompt=lambda values, cfg: f"Translate to French: {values['source']}",
    template="plain",
    loss="the French text + EOS",
    metrics=chrf_only,
    headline="chrf++",
    infer_line='English text: "Good morning", or {"source": "Good morning"}',
    language=("en", "fr"),
    tags=("translation",),
)
ROWS = [
    {"English": "Good morning", "French": "Bonjour"},
    {"English": "Thank you", "French": "Merci"},
    {"English": "See you soon", "French": "À bientôt"},
    {"English": "Good night", "French": "Bonne nuit"},
]


@pytest.fixture
def translation(monkeypatch):
    """The extra task, registered for one test only."""
    monkeypatch.setitem(tasks.TASKS, "translation", TRANSLATION)
    return TRANSLATION


@pytest.fixture
def pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the built-in records


def test_built_in_tasks_in_the_order_data_task_lists_them():
    assert tasks.names() == ("summarization", "gsm8k", "qa", "chat", "instruction", "completion", "text")


@pytest.mark.parametrize("name", tasks.names())
def test_every_record_is_complete(name):
    """Each record says how it trains, how eval scores it, what infer takes, and its card."""
    t = tasks.get(name)
    assert t.fields and (t.answer is None or t.answer in t.fields)
    assert t.loss and t.infer_line and t.language and t.headline
    assert (t.metrics is None) == (t.shape == "blocks")  # generation is scored; raw text is perplexity
    if t.metrics is not None:
        assert t.headline in t.metrics(["a b c"], ["a b c"])


def test_detection_order_tries_specific_shapes_first():
    order = [t.name for t in tasks.detection_order()]
    assert order == ["chat", "summarization", "instruction", "completion", "gsm8k", "qa", "text"]


def test_unknown_task_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown task 'translation'; valid tasks: summarization, gsm8k"):
        tasks.get("translation")


def test_card_language_comes_from_config_then_the_task():
    assert tasks.card_language("summarization", None) == ["hi", "en"]
    assert tasks.card_language("summarization", ["en"]) == ["en"]
    assert tasks.card_language("chat", None) == ["en"]
    assert tasks.card_language("auto", None) == ["en"]


def test_card_language_is_not_guessed_from_the_source_name(tmp_path):
    """The old card said Hindi for any source named *hindi*; now data.language (or the task) decides."""
    from unsloth_sft.export.card import model_card

    cfg = small_config(tmp_path, "data.source=my-hindi-chats.jsonl", "data.task=chat")
    assert "language:\n- en\n" in model_card(cfg, None, None, "lora")
    cfg = small_config(tmp_path, "data.task=chat", "data.language=[hi, en]")
    assert "language:\n- hi\n- en\n" in model_card(cfg, None, None, "lora")


# ---------------------------------------------------------------- a new task is one record


def test_config_accepts_a_registered_task_and_lists_it(tmp_path, translation):
    assert small_config(tmp_path, "data.task=translation").data.task == "translation"
    with pytest.raises(ConfigError, match="'translation'"):
        small_config(tmp_path, "data.task=translate")


def test_new_task_is_detected_from_its_columns_and_aliases(tmp_path, pairs, translation):
    from unsloth_sft.data.examples import load_examples

    examples = load_examples(small_config(tmp_path, f"data.source={pairs}", "data.test_size=1"))
    assert examples.task == "translation"
    conv = (examples.train_conversations + examples.test_conversations)[0]
    row = next(r for r in ROWS if r["French"] == conv[1]["content"])
    assert conv == [
        {"role": "user", "content": f"Translate to French: {row['English']}"},
        {"role": "assistant", "content": row["French"]},
    ]


def test_new_task_without_its_record_is_not_detected(tmp_path, pairs):
    from unsloth_sft.data.examples import load_examples

    with pytest.raises(DataError, match="cannot tell the task"):
        load_examples(small_config(tmp_path, f"data.source={pairs}"))


def test_new_task_fields_are_valid_data_columns_keys(tmp_path, translation):
    from unsloth_sft.data.columns import check_columns

    check_columns(small_config(tmp_path, "data.columns.source=en").data)
    with pytest.raises(DataError, match="fields: .*source.*target"):
        check_columns(small_config(tmp_path, "data.columns.src=en").data)


def test_new_task_renders_in_its_template_with_the_answer_trained(tmp_path, pairs, tokenizer, translation):
    from unsloth_sft.data.examples import prepare

    prepared = prepare(small_config(tmp_path, f"data.source={pairs}", "data.test_size=1"), tokenizer)
    assert prepared.task == "translation" and prepared.template == "plain"
    row = prepared.train[0]
    trained = [t for t, label in zip(row["input_ids"], row["labels"]) if label != -100]
    prompt = [t for t, label in zip(row["input_ids"], row["labels"]) if label == -100]
    assert tokenizer.decode(prompt).endswith(tuple(f"Translate to French: {r['English']}" for r in ROWS))
    assert tokenizer.decode(trained) in {r["French"] + tokenizer.eos_token for r in ROWS}


def test_eval_scores_a_new_task_with_its_own_metric(translation):
    from unsloth_sft.evaluation.evaluate import score

    scores = score(translation, ["Bonjour", "Merci"], ["Bonjour", "Merci"], ["Hello", "Thanks"])
    assert set(scores) == {"chrf++"}
    assert scores["chrf++"]["tuned"] == pytest.approx(100.0) and scores["chrf++"]["base"] < 20
    assert tasks.get("translation").metrics(["Merci"], ["Merci"]) == {"chrf++": pytest.approx(100.0)}


def test_run_summary_shows_a_new_tasks_headline(tmp_path, translation):
    from unsloth_sft.evaluation.report import run_summary
    from unsloth_sft.runs.folder import RunDir

    run = RunDir(tmp_path / "run")
    (run.path / "eval").mkdir(parents=True)
    (run.metrics_file).write_text(json.dumps({"steps": 2, "first_loss": 2.0, "last_loss": 1.0, "memory": {}}))
    scores = {"eval_loss": {"base": 2.0, "tuned": 1.0}, "chrf++": {"base": 10.0, "tuned": 40.0}}
    (run.eval_dir() / "metrics.json").write_text(json.dumps({"task": "translation", "metrics": scores}))
    assert "eval: chrf++ 10.0000 -> 40.0000 (base -> tuned)" in run_summary(run)


def test_infer_takes_a_new_tasks_string_and_columns(tmp_path, tokenizer, translation):
    from unsloth_sft.evaluation.infer import prompt_text

    cfg = small_config(tmp_path, "data.task=translation")
    expected = (tokenizer.bos_token or "") + "Translate to French: Good morning"
    assert prompt_text("Good morning", cfg, "translation", tokenizer, "line 1") == expected
    assert prompt_text({"english": "Good morning"}, cfg, "translation", tokenizer, "line 2") == expected


def test_model_card_of_a_new_task(tmp_path, translation):
    import yaml

    from unsloth_sft.export.card import model_card

    card = model_card(small_config(tmp_path, "data.task=translation"), None, None, "lora")
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["language"] == ["en", "fr"] and "translation" in meta["tags"] and "lora" in meta["tags"]
    assert "(translation task)" in card


# ---------------------------------------------------------------- resolved once, read back from the run


def test_run_reads_its_saved_task_and_old_runs_fall_back_to_metrics(tmp_path):
    import yaml

    from unsloth_sft.config.load import save_config
    from unsloth_sft.runs.folder import RunDir

    cfg = small_config(tmp_path)
    run = RunDir(cfg.run_dir)
    run.path.mkdir(parents=True)
    save_config(cfg, run.config_file)  # as a run saved before the task was resolved: data.task auto
    assert yaml.safe_load(run.config_file.read_text())["data"]["task"] == "auto" and run.task is None
    run.metrics_file.write_text(json.dumps({"task": "summarization"}))
    assert run.task == "summarization" and run.config().data.task == "summarization"
    save_config(cfg.with_task("qa"), run.config_file)
    assert run.task == "qa" and run.config().data.task == "qa"


def test_a_recipe_left_on_auto_agrees_with_the_runs_resolved_task(tmp_path):
    from unsloth_sft.config.diff import config_changes
    from unsloth_sft.config.load import save_config
    from unsloth_sft.runs.config import run_config
    from unsloth_sft.runs.folder import RunDir

    cfg = small_config(tmp_path)
    run = RunDir(cfg.run_dir)
    run.path.mkdir(parents=True)
    save_config(cfg.with_task("summarization"), run.config_file)
    assert run_config(run, cfg).data.task == "summarization"  # the run's task, not a new guess
    assert config_changes(run.saved_config(), cfg.to_dict()) == []  # and a rerun may resume it
    assert config_changes(run.saved_config(), cfg.with_task("qa").to_dict()) == ["data.task: 'summarization' -> 'qa'"]
    with pytest.raises(ConfigError, match="data.task is 'qa' but"):
        run_config(run, cfg.with_task("qa"))
