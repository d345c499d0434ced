"""Evaluation and inference: base vs tuned on the tiny model, files written, bad input handled."""

from __future__ import annotations

import json

import pytest

from tests.conftest import small_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny summarization run, trained long enough to fit its own training data."""
    from unsloth_sft import pipeline

    tmp = tmp_path_factory.mktemp("evalrun")
    cfg = small_config(
        tmp,
        "model.backend=transformers",
        "train.max_steps=25",
        "data.max_samples=16",
        "eval.num_examples=4",
        "eval.batch_size=4",
        "eval.max_new_tokens=6",
    )
    pipeline.run_training(cfg)
    return cfg


def test_tuned_loss_lower_than_base_on_training_data(trained):
    """Evaluated on the data it trained on, the tuned model's loss is below the base model's."""
    import dataclasses

    from unsloth_sft.evaluation.evaluate import evaluate_run

    cfg = dataclasses.replace(trained, data=dataclasses.replace(trained.data, test_split="train"))
    result = evaluate_run(cfg, cfg.run_dir)
    loss = result["metrics"]["eval_loss"]
    assert loss["tuned"] < loss["base"], loss
    assert loss["delta"] == pytest.approx(loss["tuned"] - loss["base"])


@pytest.mark.parametrize("per_row", [True, False])
def test_eval_loss_equals_the_full_logits_loss(trained, per_row):
    """Logits at trained positions only (one row at a time, or a padded batch's union of positions) give the mean
    cross-entropy per trained token that full logits give, row by row, through the model's own loss."""
    import torch

    from unsloth_sft.data.examples import load_examples, prepare
    from unsloth_sft.evaluation.loss import eval_loss
    from unsloth_sft.models.load import load_for_inference

    model, tokenizer = load_for_inference(trained.model.name, str(trained.run_dir / "adapter"))
    data = prepare(trained, tokenizer, load_examples(trained))
    rows = [data.train[i] for i in range(6)]
    total = count = 0.0
    with torch.no_grad():
        for row in rows:
            n = sum(label != -100 for label in row["labels"][1:])
            out = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]]))
            total, count = total + float(out.loss) * n, count + n
    lengths = {len(r["input_ids"]) for r in rows}
    assert len(lengths) > 1, "precondition: rows of different lengths, so a batch pads"
    from unsloth_sft.core.progress import Progress

    seen = []  # (rows counted, forward calls made) at each progress update: a row counts once it is scored
    calls = []
    forward = model.forward
    model.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    update = Progress.update
    Progress.update = lambda self, n=1, *shown: seen.append((self.n + n, len(calls))) or update(self, n, *shown)
    try:
        got = eval_loss(model, tokenizer, data.train.select(range(6)), batch_size=4, per_row=per_row)
    finally:
        Progress.update, model.forward = update, forward
    assert got == pytest.approx(total / count, rel=1e-4)
    assert seen[-1][0] == 6 and all(n <= (n_calls * 4 if not per_row else n_calls) for n, n_calls in seen)


def test_eval_writes_report(trained):
    from unsloth_sft.evaluation.evaluate import evaluate_run

    result = evaluate_run(trained, trained.run_dir)
    folder = trained.run_dir / "eval"
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and set(rows[0]) == {"input", "reference", "base", "tuned"}
    saved = json.loads((folder / "metrics.json").read_text())
    assert set(saved["metrics"]) >= {"eval_loss", "rouge1", "rouge2", "rougeL", "chrf++", "bleu"}
    assert saved["metrics"] == json.loads(json.dumps(result["metrics"]))
    report = (folder / "report.md").read_text()
    assert "| rouge1 |" in report and "**Tuned:**" in report
    assert (folder / "metrics.png").read_bytes()[:4] == b"\x89PNG"


def test_the_task_is_resolved_once_and_saved_with_the_run(trained):
    """The recipe said data.task: auto; config.yaml says what it was, and eval/infer read it from there."""
    from unsloth_sft.evaluation.infer import run_task
    from unsloth_sft.runs.config import run_config
    from unsloth_sft.runs.folder import RunDir

    run = RunDir(trained.run_dir)
    assert trained.data.task == "auto" and run.saved_config()["data"]["task"] == "summarization"
    cfg = run_config(run, trained)  # the recipe, still on auto, agrees with the run
    assert cfg.data.task == "summarization" and run_task(run, cfg) == "summarization"


def test_batched_generation_equals_one_by_one(trained):
    """Left-padded batches give the same greedy text as one prompt at a time."""
    import dataclasses

    from unsloth_sft.data.examples import prepare
    from unsloth_sft.data.prompts import prompts_for
    from unsloth_sft.evaluation.generate import generate
    from unsloth_sft.models.load import load_run_model

    model, tok = load_run_model(trained.run_dir)
    data = prepare(trained, tok)
    prompts = prompts_for(tok, data.test_conversations[:3], data.template)
    batched = generate(model, tok, prompts, dataclasses.replace(trained.eval, batch_size=3))
    single = generate(model, tok, prompts, dataclasses.replace(trained.eval, batch_size=1))
    assert batched == single


def test_eval_refuses_run_without_model(tmp_path):
    from unsloth_sft.core.errors import ModelError
    from unsloth_sft.evaluation.evaluate import evaluate_run

    cfg = small_config(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no adapter/ or merged/"):
        evaluate_run(cfg, tmp_path / "empty")


def test_adapter_on_wrong_base_is_refused(trained, tmp_path):
    """An adapter trained on one architecture is refused on another, naming the base it came from."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from unsloth_sft.core.errors import ModelError
    from unsloth_sft.models.load import load_for_inference

    other = Gemma2ForCausalLM(
        Gemma2Config(
            vocab_size=3000,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            intermediate_size=64,
        )
    )
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ModelError, match="does not match this base model"):
        load_for_inference(str(tmp_path / "other"), str(trained.run_dir / "adapter"))


def test_infer_file_round_trip(trained, tmp_path):
    """Prompt strings, messages and dataset rows all generate; a bad line is counted, the rest written."""
    from unsloth_sft.evaluation.infer import infer_file

    lines = [
        json.dumps("#Person1#: नमस्ते।\n#Person2#: जी, बोलिए।", ensure_ascii=False),
        json.dumps({"messages": [{"role": "user", "content": "hello"}]}),
        "{not json",
        json.dumps({"dialogue": "#Person1#: चलो।\n#Person2#: हाँ।"}, ensure_ascii=False),
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    counts = infer_file(trained, trained.model.name, str(trained.run_dir / "adapter"), src, out)
    assert counts == {"written": 3, "failed": 1, "output": str(out)}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 4]
    assert all(isinstance(r["output"], str) for r in rows)


def test_eval_with_empty_test_split_is_refused(trained):
    import dataclasses

    from unsloth_sft.core.errors import DataError
    from unsloth_sft.evaluation.evaluate import evaluate_run

    cfg = dataclasses.replace(
        trained, data=dataclasses.replace(trained.data, source="sample:tiny-book", task="summarization")
    )
    with pytest.raises(DataError):
        evaluate_run(cfg, cfg.run_dir)


def test_eval_of_a_run_folder_alone(trained, capsys):
    """Defect 3: `eval --run RUN_DIR` needs no params file: the run's config.yaml says what to score."""
    from unsloth_sft.app.cli import main

    assert main(["eval", "--run", str(trained.run_dir)]) == 0
    saved = json.loads((trained.run_dir / "eval" / "metrics.json").read_text())
    assert saved["data"] == trained.data.source and saved["test_examples"] == 16


def test_eval_on_another_dataset(trained, tmp_path, capsys):
    """`eval --run RUN --data FILE`: every row a test example, the run's task and template, Hindi headers found."""
    from unsloth_sft.app.cli import main

    rows = [{"संवाद": f"#Person1#: नमस्ते {i}।\n#Person2#: जी।", "सारांश": f"दोनों ने {i} बार नमस्ते कहा।"} for i in range(3)]
    path = tmp_path / "hindi-other.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert main(["eval", "--run", str(trained.run_dir), "--data", str(path)]) == 0
    assert "every row is a test example" in capsys.readouterr().out
    saved = json.loads((trained.run_dir / "eval-hindi-other" / "metrics.json").read_text())
    assert saved["test_examples"] == 3 and saved["task"] == "summarization" and saved["data"] == str(path)
    assert "rougeL" in saved["metrics"]


def test_eval_scores_a_seeded_sample_of_a_big_test_split(trained, tmp_path, capsys):
    """eval.max_samples 5 of 12 test rows: said in one line; eval loss on the 5, generation on the first 2 of them."""
    from unsloth_sft.app.cli import main
    from unsloth_sft.evaluation.evaluate import sample_indices

    rows = [{"dialogue": f"#Person1#: नमस्ते {i}।\n#Person2#: जी।", "summary": f"{i} बार नमस्ते।"} for i in range(12)]
    path = tmp_path / "big-test.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    args = ["eval", "--run", str(trained.run_dir), "--data", str(path)]
    assert main([*args, "--set", "eval.max_samples=5", "--set", "eval.num_examples=2"]) == 0
    seed = trained.train.seed
    assert f"eval: scoring 5 of 12 test examples, drawn with train.seed {seed}" in capsys.readouterr().out
    folder = trained.run_dir / "eval-big-test"
    saved = json.loads((folder / "metrics.json").read_text())
    assert (saved["test_examples"], saved["test_split_examples"]) == (5, 12)
    picked = sample_indices(12, 5, seed)[:2]
    predictions = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    assert [p["reference"] for p in predictions] == [rows[i]["summary"] for i in picked]
    assert all(p["base"] is not None for p in predictions)  # base and tuned answered the same sampled prompts


def test_infer_with_base_and_adapter_uses_the_runs_task(trained, tmp_path, capsys):
    """--model BASE --adapter RUN/adapter: a plain string is a dialogue (the run's task), not a chat message."""
    from unsloth_sft.app.cli import main

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps("#Person1#: नमस्ते।\n#Person2#: जी।", ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert (
        main(
            [
                "infer",
                "--model",
                "tiny-gemma2",
                "--adapter",
                str(trained.run_dir / "adapter"),
                "--input",
                str(src),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert "1 answers written" in capsys.readouterr().out and len(out.read_text().splitlines()) == 1


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    from unsloth_sft import pipeline

    cfg = small_config(
        tmp_path_factory.mktemp("textrun"),
        "model.backend=transformers",
        "data.source=sample:tiny-book",
        "data.task=text",
        "train.max_steps=2",
        "eval.max_new_tokens=6",
    )
    pipeline.run_training(cfg)
    return cfg


def test_infer_on_a_raw_text_run(text_run, tmp_path, capsys):
    """Defect 4: a text run continues raw text ({"text": ...} or a string, no chat template); a messages line fails
    with the reason, the others are written, and the exit code says some failed."""
    from unsloth_sft.app.cli import main

    lines = [
        json.dumps("Once upon a time"),
        json.dumps({"text": "The river bent"}),
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
        "not json at all",
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["infer", "--run", str(text_run.run_dir), "--input", str(src), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "2 of 4 input lines failed" in err and "Traceback" not in err and "KeyError" not in err
    assert "line 4: not JSON" in err and "double quotes" in err
    assert [json.loads(r)["line"] for r in out.read_text().splitlines()] == [1, 2]


def test_text_prompts_are_raw(tokenizer):
    from unsloth_sft.config.load import load_config
    from unsloth_sft.evaluation.infer import prompt_text

    cfg = load_config(None, ["data.task=text"])
    assert prompt_text("Once upon", cfg, "text", tokenizer, "x") == "<bos>Once upon"
    assert prompt_text({"text": "Once"}, cfg, "text", tokenizer, "x") == "<bos>Once"
