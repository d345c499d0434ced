"""Training on the tiny model: both backends learn, only LoRA weights move, merged weights equal adapter-on-base."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import small_config

pytestmark = pytest.mark.slow


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("backend", ["unsloth", "transformers"])
def test_qlora_trains_lora_only(tmp_path, backend):
    """4-bit base + LoRA: loss falls, every LoRA matrix B moves, no base weight changes."""
    from unsloth_sft import pipeline

    cfg = small_config(
        tmp_path,
        f"model.backend={backend}",
        "model.load_in_4bit=true",
        "train.max_steps=12",
        "export.save_methods=[lora]",
    )
    run = pipeline.start(cfg)
    assert run.loaded.backend == backend
    before = _snapshot(run.loaded.model)
    frozen_before = {n: p.detach().clone() for n, p in run.loaded.model.named_parameters() if not p.requires_grad}
    metrics = pipeline.fit(run)
    after = dict(run.loaded.model.named_parameters())
    lora_b = [n for n in before if "lora_B" in n]
    assert lora_b, "no LoRA weights found"
    assert all(not torch.equal(before[n], after[n].detach()) for n in lora_b)
    assert all(torch.equal(frozen_before[n], after[n].detach()) for n in frozen_before)
    assert metrics["steps"] == 12
    assert metrics["last_loss"] < metrics["first_loss"]
    assert metrics["tokens_seen"] > 0 and metrics["tokens_per_s"] > 0
    assert metrics["memory"]["peak_rss_mb"] > 0
    assert 0 < metrics["trainable_params"] < metrics["total_params"]
    final = pipeline.finish(run)
    assert (cfg.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((cfg.run_dir / "metrics.json").read_text())["steps"] == final["steps"]
    assert (cfg.run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_merged_model_reloads_and_matches_adapter(tmp_path, tiny_path):
    """merged_16bit: plain transformers reloads it, its logits equal base+adapter's, and it generates."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unsloth_sft import pipeline

    cfg = small_config(tmp_path, "model.backend=transformers", "export.save_methods=[lora,merged_16bit]")
    metrics = pipeline.run_training(cfg)
    merged_dir, adapter_dir = cfg.run_dir / "merged", cfg.run_dir / "adapter"
    assert set(metrics["exported"]) == {"lora", "merged_16bit"}
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md"):
        assert (merged_dir / name).is_file(), name
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(tiny_path)
    with_adapter = PeftModel.from_pretrained(base, adapter_dir)
    tok = AutoTokenizer.from_pretrained(merged_dir)
    ids = tok("नमस्ते, आप कैसे हैं? Hello there", return_tensors="pt")
    with torch.no_grad():
        a = with_adapter(**ids).logits
        m = merged(**ids).logits
    assert torch.allclose(a, m, atol=1e-4), (a - m).abs().max()
    out = merged.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5 or tok.eos_token_id in out[0].tolist()
    card = (merged_dir / "README.md").read_text()
    assert card.startswith("---\n") and "base_model: tiny-gemma2" in card and "- unsloth" in card


def test_full_finetune_saves_whole_model(tmp_path):
    """finetune: full trains every weight (no adapter) and saves the model as merged/."""
    from unsloth_sft import pipeline

    cfg = small_config(
        tmp_path,
        "finetune=full",
        "model.backend=transformers",
        "export.save_methods=[merged_16bit]",
        "train.learning_rate=0.001",
    )
    run = pipeline.start(cfg)
    assert run.loaded.trainable_params == run.loaded.total_params
    before = _snapshot(run.loaded.model)
    pipeline.fit(run)
    changed = sum(not torch.equal(before[n], p.detach()) for n, p in run.loaded.model.named_parameters())
    assert changed == len(before)
    pipeline.finish(run)
    assert (cfg.run_dir / "merged" / "model.safetensors").is_file()
    assert not (cfg.run_dir / "adapter").exists()


def test_tiny_model_builds_identically(tmp_path, tiny_path):
    """Two builds of the tiny model give byte-identical weights and tokenizer."""
    from unsloth_sft.models.tiny import build_tiny_model

    again = build_tiny_model(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_path / name).read_bytes(), name


def test_target_modules_the_model_lacks(tmp_path):
    from tests.conftest import load_model
    from unsloth_sft.core.errors import ModelError

    cfg = small_config(tmp_path, "model.backend=transformers", "lora.target_modules=[q_proj,c_attn]")
    with pytest.raises(ModelError, match=r"c_attn.*its linear layers are: .*q_proj"):
        load_model(cfg)
