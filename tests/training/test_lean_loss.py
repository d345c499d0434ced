"""The lean CPU loss (training/loss.py): the same loss and gradients as the model's own loss on full logits, over
each example's trained positions only (no union across a padded batch), through either chunked head; the CPU
trainer uses it; and a dropped packing / padding-free option is named in a warning."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from tests.conftest import load_model, small_config
from unsloth_sft.training import loss as lean


@pytest.fixture(scope="module")
def tiny_lora(tiny_path, tmp_path_factory):
    """The tiny Gemma-2 (final-logit softcap 30) with LoRA, transformers backend."""
    cfg = small_config(tmp_path_factory.mktemp("lean"), "model.name=tiny-gemma2", "model.backend=transformers")
    return load_model(cfg)


def batch(tokenizer, rows: list[tuple[int, int]]):
    """A right-padded batch: each row (prompt tokens, answer tokens), prompts labelled -100, pads -100."""
    import torch

    torch.manual_seed(0)
    width = max(p + a for p, a in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (prompt, answer) in enumerate(rows):
        ids[i, : prompt + answer] = torch.randint(5, 1500, (prompt + answer,))
        labels[i, prompt : prompt + answer] = ids[i, prompt : prompt + answer]
        mask[i, : prompt + answer] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


ROWS = [(12, 5), (3, 20), (25, 2)]  # answers at different places: a union would cover 28 columns x 3 rows


def full_and_lean(model, inputs, head=None):
    """(full-logits loss, lean loss, grads of each) on the same batch."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    full = model(**inputs).loss
    full.backward()
    full_grads = [p.grad.clone() for p in trainable]
    model.zero_grad()
    mine = lean.lean_loss(model, inputs)
    mine.backward()
    return full.item(), mine.item(), full_grads, [p.grad.clone() for p in trainable]


def test_equals_the_full_logits_loss_with_a_softcap(tiny_lora):
    model = tiny_lora.model
    assert model.config.final_logit_softcapping  # Gemma-2: the chunked head must apply it
    full, mine, g_full, g_mine = full_and_lean(model, batch(tiny_lora.tokenizer, ROWS))
    assert mine == pytest.approx(full, rel=1e-5)
    for a, b in zip(g_full, g_mine):
        assert (a - b).abs().max() <= 1e-5 + 1e-4 * a.abs().max()


def test_unsloths_cpu_kernel_gives_the_same_loss(tiny_lora, monkeypatch):
    """With unsloth's CPU backend loaded, its chunked log-prob kernel (the one it routes TRL's fused head to) runs."""
    pytest.importorskip("unsloth", reason="unsloth is not installed (the [gpu] extra)")
    import unsloth  # noqa: F401
    import unsloth_zoo.cpu.ops as ops

    used = []
    monkeypatch.setitem(
        sys.modules,
        "unsloth_zoo.cpu.ops",
        SimpleNamespace(
            cpu_chunked_log_probs=lambda *a, **k: used.append(a[0].shape[0]) or ops.cpu_chunked_log_probs(*a, **k)
        ),
    )
    full, mine, g_full, g_mine = full_and_lean(tiny_lora.model, batch(tiny_lora.tokenizer, ROWS))
    assert used == [27] and mine == pytest.approx(full, rel=1e-5)  # 5 + 20 + 2 answer tokens, less the shift
    for a, b in zip(g_full, g_mine):
        assert (a - b).abs().max() <= 1e-5 + 1e-4 * a.abs().max()


def test_each_row_pays_only_for_its_own_positions(tiny_lora, monkeypatch):
    inputs = batch(tiny_lora.tokenizer, ROWS)
    seen = []
    head_nll = lean.head_nll
    monkeypatch.setattr(lean, "head_nll", lambda rows, *a, **k: seen.append(rows.shape[0]) or head_nll(rows, *a, **k))
    lean.lean_loss(tiny_lora.model, inputs)
    trained = (inputs["labels"][:, 1:] != -100).sum(dim=1).tolist()
    union = int((inputs["labels"][:, 1:] != -100).any(dim=0).sum())
    assert trained == [5, 20, 2] and seen == [sum(trained)]  # the answer tokens; the first predicts from <bos>
    assert seen[0] < union * len(ROWS)  # 27 rows through the head, where the union would take 3 x 28


def test_divides_by_the_trainers_count_and_survives_an_untrained_batch(tiny_lora):
    import torch

    inputs = batch(tiny_lora.tokenizer, ROWS)
    mean = lean.lean_loss(tiny_lora.model, inputs)
    assert lean.lean_loss(tiny_lora.model, inputs, 54).item() == pytest.approx(mean.item() * 27 / 54, rel=1e-5)
    untrained = {**inputs, "labels": torch.full_like(inputs["labels"], -100)}
    zero = lean.lean_loss(tiny_lora.model, untrained)
    assert zero.item() == 0.0 and zero.requires_grad


def test_a_trained_head_falls_back_to_the_models_own_loss(tiny_lora):
    head = tiny_lora.model.get_output_embeddings()
    assert lean.head_parts(tiny_lora.model) is not None
    head.weight.requires_grad_(True)
    try:
        assert lean.head_parts(tiny_lora.model) is None
        assert lean.lean_loss(tiny_lora.model, batch(tiny_lora.tokenizer, ROWS)) is None
    finally:
        head.weight.requires_grad_(False)


def test_the_cpu_trainer_trains_with_the_lean_loss(tmp_path, monkeypatch):
    from unsloth_sft.data.examples import load_examples, prepare
    from unsloth_sft.training.trainer import build_trainer

    cfg = small_config(
        tmp_path, "model.name=tiny-gemma2", "model.backend=transformers", "train.max_steps=2", "train.compile=false"
    )
    lm = load_model(cfg)
    seen = []
    head_nll = lean.head_nll
    monkeypatch.setattr(lean, "head_nll", lambda rows, *a, **k: seen.append(rows.shape[0]) or head_nll(rows, *a, **k))
    trainer = build_trainer(cfg, lm.model, lm.tokenizer, prepare(cfg, lm.tokenizer, load_examples(cfg)).train)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(seen) == 2 and all(n > 0 for n in seen) and len(losses) == 2 and all(0 < x < 20 for x in losses)


@pytest.mark.parametrize("key", ["packing", "padding_free"])
def test_a_dropped_option_is_named_once(tmp_path, capsys, key):
    from unsloth_sft.training.trainer import warn_dropped

    cfg = small_config(tmp_path, f"train.{key}=true")
    assert warn_dropped(cfg, SimpleNamespace(packing=False, padding_free=False), "unsloth") == [key]
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and f"train.{key} is on but the unsloth backend turned it off" in err
    assert warn_dropped(cfg, SimpleNamespace(packing=True, padding_free=True), "transformers") == []
    assert capsys.readouterr().err == ""


def test_compile_auto_only_for_a_model_big_enough(tmp_path, monkeypatch):
    import shutil

    import torch

    from unsloth_sft.training import trainer as tr

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    small = torch.nn.Linear(4, 4)
    big = SimpleNamespace(parameters=lambda: [torch.empty(1).expand(tr.COMPILE_MIN_PARAMS)])
    compiler = any(shutil.which(cc) for cc in ("g++", "c++", "clang++", "cl"))
    auto = small_config(tmp_path)
    assert auto.train.compile == "auto"
    bf16 = small_config(tmp_path, "model.dtype=bfloat16")  # what auto picks on a CPU with AMX / AVX512-BF16
    assert tr.compile_layers_on(bf16, small) is False and tr.compile_layers_on(bf16, big) is compiler
    assert tr.compile_layers_on(small_config(tmp_path, "model.dtype=float32"), big) is False  # fp32: not worth it
    assert tr.compile_layers_on(small_config(tmp_path, "train.compile=true"), small) is compiler
    assert tr.compile_layers_on(small_config(tmp_path, "train.compile=false"), big) is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # unsloth compiles on a GPU itself
    assert tr.compile_layers_on(small_config(tmp_path, "train.compile=true"), big) is False


def test_the_compile_callback_compiles_decoder_layers_for_training_only(tiny_lora):
    from unsloth_sft.training.trainer import compile_callback, decoder_layers

    layers = decoder_layers(tiny_lora.model)
    assert len(layers) == 2
    callback = compile_callback()
    callback.on_train_begin(None, None, None, model=tiny_lora.model)
    assert all(layer._compiled_call_impl is not None for layer in layers)
    callback.on_step_end(None, None, SimpleNamespace(should_evaluate=True), model=tiny_lora.model)
    assert all(layer._compiled_call_impl is None for layer in layers)  # eager for the evaluation
    callback.on_step_begin(None, None, None, model=tiny_lora.model)
    assert all(layer._compiled_call_impl is not None for layer in layers)
    callback.on_train_end(None, None, None, model=tiny_lora.model)
    assert all(layer._compiled_call_impl is None for layer in layers)  # generation and export run eager
