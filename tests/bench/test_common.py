"""The helpers every benchmark uses (bench.common: model shapes, bisection, worker processes, FLOPs, tables) and
the ones the CPU benchmarks share (bench.cpu_common: the bundled conversations, token counting)."""

from __future__ import annotations

import pytest

from bench import common, cpu_common

# ---------------------------------------------------------------- model shapes


def test_gemma2_shapes_have_the_released_parameter_counts():
    assert common.count_parameters(common.gemma2_config(common.GEMMA2_2B)) == 2_614_341_888
    assert common.count_parameters(common.gemma2_config(common.GEMMA2_9B)) == 9_241_705_984


def test_small_model_is_10_to_20m_parameters():
    params = common.count_parameters(common.gemma2_config(common.SMALL_SHAPE, vocab_size=3000))
    assert 10e6 <= params <= 20e6


def test_build_random_model_saves_a_loadable_folder(tmp_path, tiny_path):
    from transformers import AutoConfig, AutoTokenizer

    shape = dict(
        common.SMALL_SHAPE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    path = common.build_random_model(tmp_path / "m", shape, tiny_path, dtype="bfloat16")
    config = AutoConfig.from_pretrained(path)
    assert config.hidden_size == 32 and config.vocab_size == len(AutoTokenizer.from_pretrained(path))
    assert (path / "model.safetensors").is_file()
    assert common.build_random_model(path, shape, tiny_path) == path  # built once


# ---------------------------------------------------------------- bisection


def test_bisection_finds_the_largest_passing_length():
    for limit in range(1024, 9000, 333):
        calls = []

        def try_fn(n, limit=limit, calls=calls):
            calls.append(n)
            return n <= limit

        got = common.longest_trainable(try_fn, 1024, 8192, 256)
        assert got == 1024 + (limit - 1024) // 256 * 256 if limit < 8192 else got == 8192
        assert len(calls) <= 2 + 5  # the two ends, then log2(28 steps) rounded up
        assert len(set(calls)) == len(calls)  # no length tried twice


def test_bisection_edges():
    assert common.longest_trainable(lambda n: False, 512, 4096) is None
    assert common.longest_trainable(lambda n: True, 512, 4096) == 4096
    assert common.longest_trainable(lambda n: n <= 700, 512, 512) == 512
    assert common.longest_trainable(lambda n: n <= 4000, 512, 4096, 1) == 4000
    assert common.longest_trainable(lambda n: n <= 1000, 512, 1100, 256) == 768  # hi not on the step grid
    with pytest.raises(ValueError):
        common.longest_trainable(lambda n: True, 10, 5)


# ---------------------------------------------------------------- numbers and tables


def test_markdown_table():
    table = common.markdown_table(
        [{"name": "a", "x": 1234.567, "n": 1200, "ok": True}, {"name": "b", "x": None, "n": 3, "ok": False}],
        [("name", "name", 0), ("x", "x", 1), ("n", "count", 0), ("ok", "ok", 0)],
    )
    assert table.splitlines() == [
        "| name | x | count | ok |",
        "|---|---:|---:|---:|",
        "| a | 1,234.6 | 1,200 | yes |",
        "| b | - | 3 | no |",
    ]


def test_train_flops_and_matmul_peak():
    # Gemma-3 270M with LoRA r16: ~104M non-embedding parameters, a 262,144 x 640 output projection
    flops = common.train_flops(
        tokens=1000, logits_positions=200, nonembed_params=104_000_000, vocab=262_144, hidden=640
    )
    assert flops == 2 * (2 * 104e6 * 1000 + 2 * 262_144 * 640 * 200)
    peak = common.matmul_peak("float32", size=64, reps=2)
    assert peak["gflops_per_cpu_s"] > 0 and peak["gflops_per_s"] > 0 and (peak["size"], peak["reps"]) == (64, 2)


# ---------------------------------------------------------------- data and counting


def test_bench_conversations_mix_both_samples():
    convs = cpu_common.bench_conversations(300)
    assert len(convs) == 300
    assert convs == cpu_common.bench_conversations(300)  # seeded
    firsts = {c[0]["role"] for c in convs}
    assert firsts == {"user", "system"}  # summarization (user first) and chat (system prompts) both present


def test_token_counter_counts_logits_positions():
    import torch

    def collate(examples):
        return {
            "input_ids": torch.tensor([[5, 6, 7, 8, 0], [8, 9, 4, 0, 0]]),
            "labels": torch.tensor([[-100, -100, 7, 8, -100], [-100, 9, -100, -100, -100]]),
        }

    full = cpu_common.TokenCounter(collate, pad_token_id=0)
    full([])
    assert full.per_batch == [{"slots": 10, "real": 7, "supervised": 3, "logits": 7, "logits_slots": 10}]
    # trained positions: columns 0 and 1 predict a trained token in some row (labels 9 at 1, 7 at 2, 8 at 3: 0, 1, 2)
    part = cpu_common.TokenCounter(collate, pad_token_id=0, trained_positions=True)
    part([])
    part([])
    assert part.per_batch[0] == {"slots": 10, "real": 7, "supervised": 3, "logits": 6, "logits_slots": 6}
    assert cpu_common.summed(part.per_batch) == {
        "logits": 12,
        "logits_slots": 12,
        "real": 14,
        "slots": 20,
        "supervised": 6,
    }


def test_token_counter_counts_real_padded_and_supervised_tokens():
    import torch

    def collate(examples):
        return {
            "input_ids": torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]]),
            "labels": torch.tensor([[-100, 6, 7, -100], [-100, 9, -100, -100]]),
        }

    counter = cpu_common.TokenCounter(collate, pad_token_id=0)
    counter([{}, {}])
    assert (counter.slots, counter.real, counter.supervised, counter.batches) == (8, 5, 3, 1)


# ---------------------------------------------------------------- worker processes


def test_spawn_returns_the_workers_json_or_none(tmp_path, capsys):
    """`python -m MODULE` in `cwd` (the repository root for the benchmarks; here a folder holding `worker.py`)."""
    script = tmp_path / "worker.py"
    script.write_text(
        "import json, sys\n"
        "if sys.argv[1] == 'fail':\n    print('it broke'); sys.exit(3)\n"
        "open(sys.argv[-1], 'w').write(json.dumps({'got': sys.argv[1]}))\n"
    )
    assert common.spawn("worker", ["ok"], tmp_path / "a.json", tmp_path / "a.log", cwd=tmp_path) == (0, {"got": "ok"})
    assert common.spawn("worker", ["fail"], tmp_path / "b.json", tmp_path / "b.log", cwd=tmp_path) == (3, None)
    out = capsys.readouterr().out
    assert "FAILED (exit 3)" in out and "it broke" in out
