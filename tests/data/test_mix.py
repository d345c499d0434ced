"""ShareGPT rows (trained as the chat task) and several sources mixed in one run (data.sources, mix.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.conftest import small_config
from tests.data.test_data import trained_runs, write_jsonl
from unsloth_sft.app.cli import main
from unsloth_sft.config.diff import config_changes
from unsloth_sft.config.load import load_config, save_config
from unsloth_sft.core.errors import ConfigError, DataError
from unsloth_sft.data.examples import load_examples, prepare
from unsloth_sft.data.mix import mix_lines

EOT = "<end_of_turn>"


def sharegpt_rows(n: int) -> list[dict]:
    return [
        {
            "conversations": [
                {"from": "system", "value": "Answer briefly."},
                {"from": "human", "value": f"hello {i}"},
                {"from": "gpt", "value": f"hi there {i}"},
                {"from": "user", "value": f"and {i} + 1?"},
                {"from": "assistant", "value": f"{i + 1}"},
            ]
        }
        for i in range(n)
    ]


def qa_rows(n: int) -> list[dict]:
    return [{"question": f"what is {i} plus {i}?", "answer": f"It is {2 * i}."} for i in range(n)]


def mixed(tmp_path, *sources: str, overrides=()):
    return small_config(tmp_path, f"data.sources=[{', '.join(sources)}]", *overrides)


# ---------------------------------------------------------------- ShareGPT


def test_sharegpt_rows_are_detected_and_trained_as_chat(tmp_path, tokenizer):
    rows = sharegpt_rows(10)
    src = write_jsonl(tmp_path / "sg.jsonl", rows)
    p = prepare(small_config(tmp_path, f"data.source={src}", "data.test_size=0"), tokenizer)
    assert (p.task, p.template) == ("chat", "chat")
    for i, conv in enumerate(p.train_conversations):
        assert [m["role"] for m in conv] == ["system", "user", "assistant", "user", "assistant"]
        assert conv[1]["content"] == f"hello {i}"
        # every assistant turn is trained, nothing else (the system turn is merged into the first user turn)
        runs = trained_runs(tokenizer, p.train[i]["input_ids"], p.train[i]["labels"])
        assert runs == [f"hi there {i}{EOT}", f"{i + 1}{EOT}"]
    assert rows[0]["conversations"][1] == {"from": "human", "value": "hello 0"}, "the rows read stay as they were"


def test_sharegpt_and_messages_rows_train_the_same(tmp_path, tokenizer):
    rows = sharegpt_rows(6)
    roles = {"human": "user", "gpt": "assistant"}
    as_messages = [
        {"messages": [{"role": roles.get(t["from"], t["from"]), "content": t["value"]} for t in r["conversations"]]}
        for r in rows
    ]
    a = prepare(small_config(tmp_path, f"data.source={write_jsonl(tmp_path / 'a.jsonl', rows)}"), tokenizer)
    b = prepare(small_config(tmp_path, f"data.source={write_jsonl(tmp_path / 'b.jsonl', as_messages)}"), tokenizer)
    assert a.train["input_ids"] == b.train["input_ids"] and a.train["labels"] == b.train["labels"]


def test_sharegpt_unknown_from_names_the_row_and_key(tmp_path):
    rows = sharegpt_rows(5)
    rows[2]["conversations"][3]["from"] = "narrator"  # ("tool" is a speaker: Hermes' tool results)
    src = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_examples(small_config(tmp_path, f"data.source={src}", "data.test_size=0"))
    message = str(err.value)
    assert "\n" not in message
    assert f"{src} line 3" in message and "conversations[3].from 'narrator'" in message and "human, gpt" in message


# ---------------------------------------------------------------- data.sources


def test_weights_set_the_shares_and_each_source_keeps_its_task_and_test_split(tmp_path):
    qa = write_jsonl(tmp_path / "qa.jsonl", qa_rows(40))
    sg = write_jsonl(tmp_path / "sg.jsonl", sharegpt_rows(20))
    cfg = mixed(
        tmp_path, f"{{source: {qa}, weight: 1}}", f"{{source: {sg}, weight: 3}}", overrides=["data.test_size=4"]
    )
    ex = load_examples(cfg)
    assert ex.task == "chat"
    by_source = {m["source"]: m for m in ex.mix}
    # sg has 16 training rows and asks for 3/4: 16 from sg, 16/3 ~ 5 from qa; none repeated
    assert by_source[str(sg)]["train_examples"] == 16 and by_source[str(qa)]["train_examples"] == 5
    assert by_source[str(sg)]["share"] == pytest.approx(16 / 21, abs=1e-4)
    assert [m["task"] for m in ex.mix] == ["qa", "chat"]
    assert [s.task for s in ex.sources] == ["qa", "chat"]
    assert [m["test_examples"] for m in ex.mix] == [4, 4] and len(ex.test_conversations) == 8
    users = [c[0]["content"] for c in ex.train_conversations]
    assert sum(u.startswith("what is") for u in users) == 5
    assert len({json.dumps(c) for c in ex.train_conversations}) == 21, "weights never repeat an example"
    assert load_examples(cfg).train_conversations == ex.train_conversations, "the mix is seeded"


def test_samples_take_exact_counts_repeating_a_small_source(tmp_path):
    qa = write_jsonl(tmp_path / "qa.jsonl", qa_rows(5))
    sg = write_jsonl(tmp_path / "sg.jsonl", sharegpt_rows(8))
    cfg = mixed(tmp_path, f"{{source: {qa}, samples: 12}}", f"{{source: {sg}}}", overrides=["data.test_size=0"])
    ex = load_examples(cfg)
    assert [m["train_examples"] for m in ex.mix] == [12, 8]  # qa repeated to 12; no weight or samples: every row
    questions = [c[0]["content"] for c in ex.train_conversations if c[0]["content"].startswith("what is")]
    assert sorted(set(questions)) == sorted(r["question"] for r in qa_rows(5))


def test_a_mix_tokenizes_with_one_template_and_masks_each_source(tmp_path, tokenizer):
    qa = write_jsonl(tmp_path / "qa.jsonl", qa_rows(6))
    sg = write_jsonl(tmp_path / "sg.jsonl", sharegpt_rows(6))
    p = prepare(mixed(tmp_path, f"{{source: {qa}}}", f"{{source: {sg}}}", overrides=["data.test_size=0"]), tokenizer)
    assert (p.task, p.template) == ("chat", "chat") and len(p.train) == 12
    for i, conv in enumerate(p.train_conversations):
        answers = [m["content"].strip() + EOT for m in conv if m["role"] == "assistant"]
        assert trained_runs(tokenizer, p.train[i]["input_ids"], p.train[i]["labels"]) == answers


def test_mix_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.source and data.sources are exclusive"):
        load_config(overrides=["data.source=a.jsonl", "data.sources=[{source: b.jsonl}]"])
    with pytest.raises(ConfigError, match=r"data.sources\[0\] \(a.jsonl\): give weight or samples, not both"):
        load_config(overrides=["data.sources=[{source: a.jsonl, weight: 1, samples: 3}]"])
    with pytest.raises(ConfigError, match=r"data.sources\[1\].wieght'; did you mean 'weight'"):
        load_config(overrides=["data.sources=[{source: a.jsonl}, {source: b.jsonl, wieght: 2}]"])
    with pytest.raises(ConfigError, match="a mix trains as one chat task"):
        load_config(overrides=["data.task=qa", "data.sources=[{source: a.jsonl}]"])


def test_raw_text_cannot_join_a_mix(tmp_path):
    qa = write_jsonl(tmp_path / "qa.jsonl", qa_rows(6))
    with pytest.raises(DataError, match=r"data.sources\[1\] sample:tiny-book: a text source"):
        load_examples(mixed(tmp_path, f"{{source: {qa}}}", "{source: 'sample:tiny-book'}"))


def test_a_mixed_config_saves_and_loads_again(tmp_path):
    cfg = load_config(overrides=["data.sources=[{source: a.jsonl, task: qa, weight: 2}]"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert (
        again.data.sources == cfg.data.sources
        and "source:" not in (tmp_path / "config.yaml").read_text().split("sources:")[0].split("data:")[1]
    )


def test_a_rerun_of_a_mix_recipe_may_resume_its_run():
    recipe = load_config(overrides=["data.sources=[{source: a.jsonl, weight: 2}, {source: b.jsonl}]"])
    saved = recipe.with_task("chat").with_sources(
        [dataclasses.replace(s, task=t) for s, t in zip(recipe.data.sources, ("qa", "chat"))]
    )
    assert config_changes(saved.to_dict(), recipe.to_dict()) == []  # auto vs the task the run resolved
    heavier = load_config(overrides=["data.sources=[{source: a.jsonl, weight: 3}, {source: b.jsonl}]"])
    assert [c.split(":")[0] for c in config_changes(saved.to_dict(), heavier.to_dict())] == ["data.sources"]


def test_mixed_run_trains_from_the_cli_and_records_the_shares(tmp_path, capsys):
    qa = write_jsonl(tmp_path / "qa.jsonl", qa_rows(20))
    sg = write_jsonl(tmp_path / "sg.jsonl", sharegpt_rows(10))
    params = tmp_path / "mix.yaml"
    params.write_text(
        f"run_name: mix\noutput_dir: {tmp_path / 'runs'}\n"
        "model: {name: tiny-gemma2, load_in_4bit: false, max_seq_length: 256}\n"
        f"data:\n  test_size: 2\n  sources:\n    - {{source: {qa}, weight: 3}}\n    - {{source: {sg}, weight: 1}}\n"
        "train: {max_steps: 2, per_device_train_batch_size: 2, gradient_accumulation_steps: 1, optim: adamw_torch}\n"
        "eval: {max_new_tokens: 4}\nexport: {save_methods: [lora]}\n",
        encoding="utf-8",
    )
    assert main(["train", str(params)]) == 0
    out = capsys.readouterr().out
    assert f"{qa} (qa): 18 train examples from 18 rows, 75.0 % of training; 2 test" in out
    assert f"{sg} (chat): 6 train examples from 8 rows, 25.0 % of training; 2 test" in out
    run = tmp_path / "runs" / "mix"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "chat" and metrics["train_examples"] == 24
    assert [(m["task"], m["share"]) for m in metrics["data_mix"]] == [("qa", 0.75), ("chat", 0.25)]
    saved = load_config(run / "config.yaml")  # the run folder says which sources, tasks and weights made it
    assert [(s.source, s.task, s.weight) for s in saved.data.sources] == [(str(qa), "qa", 3.0), (str(sg), "chat", 1.0)]
    assert "75.0 % of training" in (run / "config.yaml").read_text()
    assert main(["eval", "--run", str(run)]) == 0  # on the union of both sources' test splits
    result = json.loads((run / "eval" / "metrics.json").read_text())
    assert result["test_examples"] == 4 and result["data"] == f"{qa} + {sg}"


def test_mix_lines_name_every_source():
    report = [{"source": "a", "task": "qa", "rows": 4, "train_examples": 2, "share": 0.5, "test_examples": 1}]
    assert mix_lines(report) == ["  a (qa): 2 train examples from 4 rows, 50.0 % of training; 1 test"]
