"""Evaluation at scale: `eval.max_samples` samples a big test split reproducibly, and a fractional carve of a big
source is capped (the rest trains). Nothing here loads a model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from unsloth_sft.config.load import load_config
from unsloth_sft.config.run import EvalConfig
from unsloth_sft.data.sources import MAX_CARVE, train_test
from unsloth_sft.evaluation.evaluate import capped, sample_indices


def test_sample_indices_are_seeded_sorted_and_only_when_the_split_is_larger():
    assert sample_indices(200, 200, 1) is None and sample_indices(10, None, 1) is None
    picked = sample_indices(10_000, 200, 3407)
    assert len(set(picked)) == 200 and picked == sorted(picked) and max(picked) < 10_000
    assert picked == sample_indices(10_000, 200, 3407)  # the same examples on every rerun with this seed
    assert picked != sample_indices(10_000, 200, 1)


def test_capped_picks_the_same_examples_for_loss_and_generation(capsys):
    import datasets

    data = SimpleNamespace(
        test=datasets.Dataset.from_dict({"row": list(range(50))}),
        test_conversations=[[{"role": "user", "content": str(i)}, {"role": "assistant", "content": "x"}] for i in range(50)],
    )  # fmt: skip
    cfg = load_config(None, ["eval.max_samples=7", "train.seed=5"])
    test, convs = capped(cfg, data)
    assert test["row"] == [int(c[0]["content"]) for c in convs] == sample_indices(50, 7, 5)
    out = capsys.readouterr().out.strip()
    assert out == "eval: scoring 7 of 50 test examples, drawn with train.seed 5 (eval.max_samples 7; null scores all)"
    everything = load_config(None, ["eval.max_samples=null"])
    assert capped(everything, data) == (data.test, data.test_conversations) and not capsys.readouterr().out


@pytest.fixture(scope="module")
def big_source(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    rows = [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(3000)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "test_size, n_test, said",
    [(0.1, MAX_CARVE, True), (0.05, 150, False), (500, 500, False)],
)
def test_a_fractional_carve_of_a_big_source_is_capped_and_said(big_source, capsys, test_size, n_test, said):
    cfg = load_config(None, [f"data.source={big_source}", f"data.test_size={test_size}"])
    train, test = train_test(cfg.data, cfg.train.seed)
    assert len(test.rows) == n_test and len(train.rows) == 3000 - n_test  # the rest stay in training
    assert not {r["instruction"] for r in train.rows} & {r["instruction"] for r in test.rows}
    out = capsys.readouterr().out
    if said:
        assert out.strip() == (
            f"data: test_size 0.1 of 3000 rows would carve 300 test rows; carving {MAX_CARVE} (the rest train; an "
            "integer data.test_size carves as many as it says)"
        )
    else:
        assert out == ""
    assert train_test(cfg.data, cfg.train.seed)[1].where == test.where  # seeded: the same carve every time


def test_the_carve_cap_is_what_eval_scores_by_default(big_source, monkeypatch, capsys):
    assert MAX_CARVE == EvalConfig().max_samples == 200
    monkeypatch.setenv("RANK", "1")  # a second training process carves the same rows, silently
    cfg = load_config(None, [f"data.source={big_source}"])
    assert len(train_test(cfg.data, cfg.train.seed)[1].rows) == MAX_CARVE and capsys.readouterr().out == ""
