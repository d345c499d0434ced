"""Data at scale: Arrow tables on disk instead of Python lists, the content-keyed cache, data.streaming."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import small_config
from unsloth_sft.core.errors import ConfigError, DataError
from unsloth_sft.data.examples import load_examples, prepare

ROOT = Path(__file__).resolve().parents[2]
OLD_KB_PER_ROW = 50  # what preparing cost per row when rows were Python lists (issue 29: ~52 KB)

PEAK = """
import json, resource, sys
import datasets  # imported by any training process before its data: not a cost of preparing
from transformers import AutoTokenizer
from tests.conftest import small_config
from unsloth_sft.data.examples import prepare
tok = AutoTokenizer.from_pretrained(sys.argv[2])
cfg = small_config(sys.argv[3], f"data.source={sys.argv[1]}", "model.max_seq_length=256")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
data = prepare(cfg, tok)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_kb": after - before, "train": len(data.train), "test": len(data.test)}))
"""


def dialogues(path: Path, n: int) -> Path:
    """n distinct Hindi summarization rows, ~0.5 KB each."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            row = {"dialogue": f"#Person1#: नमस्ते, मेरा ऑर्डर {i} अभी तक नहीं आया।\n#Person2#: मैं देखता हूँ।" * 3}
            row["summary"] = f"ग्राहक का ऑर्डर {i} देर से है।"
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


@pytest.mark.slow
def test_20k_rows_prepare_with_memory_far_below_the_per_row_cost_of_lists(tmp_path, tiny_path):
    """20k rows would have grown RSS by ~1 GB as Python lists; read, shaped and tokenized in batches into Arrow files,
    the growth stays a small fraction of that (measured in a child process: peak RSS is per process)."""
    source = dialogues(tmp_path / "big.jsonl", 20_000)
    env = {"UNSLOTH_SFT_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", PEAK, str(source), str(tiny_path), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["train"] + result["test"] == 20_000 and result["test"] == 200  # a fraction carves at most 200
    old = 20_000 * OLD_KB_PER_ROW
    assert result["grew_kb"] < old / 5, f"prepare grew RSS by {result['grew_kb']} KB; lists cost ~{old} KB"


def test_a_second_prepare_reads_every_stage_from_the_cache(tmp_path, tokenizer, monkeypatch):
    """The source's rows, its conversations and its tokens are Arrow files keyed by content: an unchanged second run
    maps them and shapes or tokenizes nothing; a changed file is read again."""
    from unsloth_sft.data import rows, tokenize

    monkeypatch.setenv("UNSLOTH_SFT_CACHE", str(tmp_path / "cache"))
    source = dialogues(tmp_path / "d.jsonl", 300)
    cfg = small_config(tmp_path, f"data.source={source}")
    first = prepare(cfg, tokenizer)
    assert first.train.cache_files and str(tmp_path / "cache" / "tokenized") in first.train.cache_files[0]["filename"]

    def refuse(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(rows, "_shape", refuse)
    monkeypatch.setattr(tokenize, "_tokenize_batch", refuse)
    again = prepare(cfg, tokenizer)
    assert again.train["input_ids"] == first.train["input_ids"] and again.test["labels"] == first.test["labels"]
    assert again.train_conversations == first.train_conversations
    with source.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"dialogue": "नई पंक्ति", "summary": "नया"}, ensure_ascii=False) + "\n")
    with pytest.raises(AssertionError, match="the cache was not used"):
        prepare(cfg, tokenizer)


def test_views_read_like_the_lists_they_replace(tmp_path, monkeypatch):
    """Rows, conversations and where-strings index, slice, iterate and compare as lists; a fresh tmp cache."""
    monkeypatch.setenv("UNSLOTH_SFT_CACHE", str(tmp_path / "cache"))
    source = dialogues(tmp_path / "d.jsonl", 50)
    ex = load_examples(small_config(tmp_path, f"data.source={source}", "data.test_size=0"))
    convs = list(ex.train_conversations)
    assert len(convs) == 50 and ex.train_conversations == convs and ex.train_conversations[-1] == convs[49]
    assert ex.train_conversations[3:6] == convs[3:6] and ex.train_conversations[::10] == convs[::10]
    assert ex.train_where[0] == f"{source} line 1" and list(ex.train.rows)[7]["summary"].endswith("7 देर से है।")
    with pytest.raises(IndexError):
        ex.train_conversations[50]


def test_errors_still_name_file_and_line_after_many_rows(tmp_path, tokenizer, monkeypatch):
    """A bad row far into a file (past several Arrow batches) is named by its line, and nothing is cached."""
    monkeypatch.setenv("UNSLOTH_SFT_CACHE", str(tmp_path / "cache"))
    source = dialogues(tmp_path / "d.jsonl", 2_500)
    lines = source.read_text(encoding="utf-8").splitlines()
    lines[2_345] = '{"dialogue": "x", "summary": 5'
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{source} line 2346: invalid JSON"):
        prepare(small_config(tmp_path, f"data.source={source}"), tokenizer)
    lines[2_345] = json.dumps({"dialogue": ["not", "text"], "summary": "s"})
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{source} line 2346: column 'dialogue' must be text, got list"):
        prepare(small_config(tmp_path, f"data.source={source}", "data.test_size=0"), tokenizer)
    assert not list((tmp_path / "cache" / "conversations").glob("*/meta.json"))


def test_streaming_without_max_steps_is_refused_in_one_line(tmp_path):
    cfg = small_config(tmp_path, "data.streaming=true", "train.max_steps=null", "train.num_train_epochs=1")
    with pytest.raises(ConfigError, match=r"^data.streaming: true needs train.max_steps .*--set train.max_steps="):
        load_examples(cfg)


def test_streaming_reads_only_the_head_and_holds_out_the_first_rows(tmp_path, tokenizer, monkeypatch):
    """A stream is not prepared: no Arrow copy of the source, a test split of its first rows, the rest streamed."""
    monkeypatch.setenv("UNSLOTH_SFT_CACHE", str(tmp_path / "cache"))
    source = dialogues(tmp_path / "d.jsonl", 400)
    cfg = small_config(tmp_path, f"data.source={source}", "data.streaming=true", "data.test_size=10")
    ex = load_examples(cfg)
    assert [w for w in ex.test_where] == [f"{source} line {n}" for n in range(1, 11)]
    assert not (tmp_path / "cache" / "data").exists()
    data = prepare(cfg, tokenizer, ex)
    first = next(iter(data.train))
    assert set(first) == {"input_ids", "labels"} and any(x != -100 for x in first["labels"])
    assert sum(1 for _ in data.train) == 390  # every row after the held-out ones, once
    assert len(data.test) == 10


@pytest.mark.slow
def test_streaming_trains_the_tiny_model_for_two_steps(tmp_path):
    """`train` on a stream: two steps, a finite loss, no count of training examples (a stream has none)."""
    from unsloth_sft.app.cli import main

    source = dialogues(tmp_path / "d.jsonl", 100)
    overrides = [f"output_dir={tmp_path}", "run_name=s", f"data.source={source}", "data.task=auto"]
    overrides += ["data.streaming=true", "train.max_steps=2", "eval.num_examples=2", "eval.max_new_tokens=4"]
    overrides += ["model.backend=transformers", "model.max_seq_length=256"]
    args = ["train", str(ROOT / "params" / "cpu" / "chat.yaml")]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and math.isfinite(metrics["last_loss"]) and metrics["train_examples"] is None
    assert metrics["task"] == "summarization"


def test_the_benchmark_generates_distinct_dialogues_the_size_of_the_sample_rows(tmp_path):
    """bench.data_scale's rows: the sample's shape (dialogue, summary), each distinct, ~1.3-1.5 KB like the sample's."""
    from bench.data_scale import generate, table

    path = generate(tmp_path / "g.jsonl", 500)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len({r["dialogue"] for r in rows}) == 500 and all(set(r) == {"dialogue", "summary"} for r in rows)
    assert 1_200 < path.stat().st_size / 500 < 1_600
    run = {"seconds": 2.0, "cpu_s": 1.0, "base_rss_mb": 400, "peak_rss_mb": 500}
    line = table([{"rows": 500, "file_mb": 1, "cache_mb": 2, "cold": run, "warm": {**run, "seconds": 0.1}}])
    assert line.splitlines()[-1] == "| 500 | 1 | 2 | 2.0 | 1.0 | 250 | 500 | 500 | 100 | 0.1 | 500 | 5.0 % |"
