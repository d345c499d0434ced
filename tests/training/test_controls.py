"""Training controls (issue 16): eval during training, early stopping + best checkpoint, optimizer and LoRA
pass-throughs, freezing, and the one-line errors of every combination that cannot work."""

from __future__ import annotations

import json
import typing

import pytest
import torch

from tests.conftest import small_config
from unsloth_sft.config.load import load_config
from unsloth_sft.core.errors import ConfigError, DataError, ModelError


def _error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_scheduler_names_are_transformers_own():
    """train.lr_scheduler_type's closed list is exactly transformers' SchedulerType (no drift on an upgrade)."""
    from transformers.trainer_utils import SchedulerType

    from unsloth_sft.config.types import Scheduler

    assert set(typing.get_args(Scheduler)) == {s.value for s in SchedulerType}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.eval_strategy=steps"], "train.eval_strategy is steps but train.eval_steps is unset"),
        (["train.early_stopping_patience=2"], "train.early_stopping_patience needs evaluation during training"),
        (["train.eval_metric=rougeL"], "train.eval_metric needs evaluation during training"),
        (["train.load_best_model_at_end=true"], "train.load_best_model_at_end needs evaluation during training"),
        (["train.eval_on_start=true"], "train.eval_on_start needs evaluation during training"),
        (["train.eval_steps=5", "train.eval_strategy=no"], "train.eval_steps needs evaluation during training"),
        (["train.lr_scheduler_type=reduce_lr_on_plateau"], "reduce_lr_on_plateau needs evaluation during training"),
        (["train.lr_scheduler_type=cosine_restarts"], "train.lr_scheduler_type: expected one of 'linear'"),
        (["train.eval_steps=5", "train.metric_for_best_model=rougeL"], "set train.eval_metric (e.g. rougeL)"),
        (
            ["train.eval_steps=5", "train.eval_metric=bleu", "train.metric_for_best_model=rougeL"],
            "'rougeL' is not computed during training; use loss or bleu",
        ),
        (
            ["train.eval_steps=5", "train.early_stopping_patience=2", "train.load_best_model_at_end=false"],
            "would export the last, not the best, step",
        ),
        (
            ["train.eval_steps=4", "train.save_steps=6", "train.early_stopping_patience=2"],
            "train.save_steps 6 is not a multiple of train.eval_steps 4",
        ),
        (["train.neftune_noise_alpha=5", "train.packing=true"], "train.neftune_noise_alpha with train.packing"),
        (["train.neftune_noise_alpha=5", "train.padding_free=true"], "neftune_noise_alpha with train.padding_free"),
        (["train.neftune_noise_alpha=0"], "train.neftune_noise_alpha must be > 0"),
        (["train.warmup_ratio=0.1"], "set train.warmup_steps: 0 to warm up by ratio"),
        (["train.warmup_ratio=1.5", "train.warmup_steps=0"], "train.warmup_ratio must be < 1"),
        (["train.weight_decay=-0.1"], "train.weight_decay must be >= 0"),
        (["train.max_grad_norm=-1"], "train.max_grad_norm must be >= 0"),
        (["train.early_stopping_threshold=-1"], "train.early_stopping_threshold must be >= 0"),
        (["train.freeze=[embeddings]"], "train.freeze is for finetune: full"),
        (["train.trainable_layers=0-3"], "train.trainable_layers is for finetune: full"),
        (
            ["finetune=full", "model.load_in_4bit=false", "export.save_methods=[merged_16bit]", "lora.use_dora=true"],
            "lora.use_dora has no effect with finetune: full",
        ),
        (["lora.layers_to_transform=3-a"], "lora.layers_to_transform: expected layer indices like"),
        (["lora.layers_to_transform=[]"], "lora.layers_to_transform: expected layer indices like"),
        (
            [
                "finetune=full",
                "model.load_in_4bit=false",
                "export.save_methods=[merged_16bit]",
                "train.trainable_layers=x",
            ],
            "train.trainable_layers: expected layer indices",
        ),
    ],
)
def test_impossible_combinations_fail_in_one_line(overrides, expected):
    assert expected in _error(*overrides)


def test_layer_ranges():
    from unsloth_sft.config.model import layer_indices

    assert layer_indices("0-2", "k", 4) == [0, 1, 2]
    assert layer_indices("2-", "k", 4) == [2, 3]
    assert layer_indices("-1", "k", 4) == [3]
    assert layer_indices("0,3", "k", 4) == [0, 3]
    assert layer_indices([1], "k", 4) == [1]
    with pytest.raises(ConfigError, match="this model has 2 layers"):
        layer_indices("0-5", "k", 2)


def test_pass_throughs_reach_sft_config(tmp_path):
    """Optimizer options go to TRL's SFTConfig as they are (warmup_ratio: transformers 5's fractional warmup_steps)."""
    from unsloth_sft.training.args import sft_config

    cfg = small_config(
        tmp_path,
        "train.warmup_ratio=0.1",
        "train.lr_scheduler_type=cosine",
        "train.weight_decay=0.05",
        "train.max_grad_norm=0.3",
        "train.neftune_noise_alpha=5",
        "train.eval_steps=3",
        "train.early_stopping_patience=2",
    )
    args = sft_config(cfg, tmp_path / "ckpt", "transformers")
    assert args.warmup_steps == 0.1 and args.lr_scheduler_type == "cosine"
    assert (args.weight_decay, args.max_grad_norm, args.neftune_noise_alpha) == (0.05, 0.3, 5)
    assert (args.eval_strategy, args.eval_steps, args.save_strategy, args.save_steps) == ("steps", 3, "steps", 3)
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_loss" and not args.greater_is_better
    assert args.prediction_loss_only and args.per_device_eval_batch_size == cfg.train.per_device_train_batch_size


def test_eval_needs_a_test_split_before_the_model_loads(tmp_path, monkeypatch):
    from unsloth_sft import pipeline
    from unsloth_sft.models import load as model

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"say {i}", "output": f"{i}"}) + "\n" for i in range(12)))
    cfg = small_config(tmp_path, f"data.source={data}", "data.test_size=0", "train.eval_steps=2")
    monkeypatch.setattr(model, "load_base", lambda cfg: pytest.fail("the model loaded before the data check"))
    with pytest.raises(DataError, match="evaluation during training .* needs a test split"):
        pipeline.start(cfg)


def test_eval_metric_must_suit_the_task(tmp_path):
    from unsloth_sft.evaluation.evaluate import check_eval_metric

    cfg = small_config(tmp_path, "train.eval_steps=2", "train.eval_metric=rougeL")
    check_eval_metric(cfg, "summarization")
    with pytest.raises(DataError, match="not computed for the gsm8k task; use one of exact_match"):
        check_eval_metric(cfg, "gsm8k")
    with pytest.raises(DataError, match="by its eval loss"):
        check_eval_metric(cfg, "text")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["unsloth", "transformers"])
def test_early_stopping_exports_the_best_checkpoint(tmp_path, backend):
    """Eval every 2 steps with a generation metric; greater_is_better on the loss makes the first evaluation the
    best while the loss falls, so patience 1 stops at step 4 of 20, and the adapter saved is step 2's, not 4's."""
    from safetensors.torch import load_file

    from unsloth_sft import pipeline
    from unsloth_sft.evaluation.report import run_summary
    from unsloth_sft.runs.folder import RunDir

    cfg = small_config(
        tmp_path,
        f"model.backend={backend}",
        "train.max_steps=20",
        "train.eval_steps=2",
        "train.early_stopping_patience=1",
        "train.greater_is_better=true",
        "train.eval_metric=rougeL",
        "train.eval_samples=4",
    )
    pipeline.run_training(cfg)
    metrics = json.loads((cfg.run_dir / "metrics.json").read_text())
    history = metrics["eval_history"]
    assert [h["step"] for h in history] == [2, 4]
    assert all(set(h) == {"step", "eval_loss", "eval_rougeL"} for h in history)
    assert history[1]["eval_loss"] < history[0]["eval_loss"], "precondition: the eval loss fell from step 2 to 4"
    assert metrics["steps"] == 4 < cfg.train.max_steps
    assert metrics["stopped"]["reason"].startswith("early stopping: eval_loss did not improve")
    assert metrics["best"] == {
        "metric": "eval_loss",
        "value": history[0]["eval_loss"],
        "step": 2,
        "checkpoint": "checkpoint-2",
        "loaded_at_end": True,
    }
    saved = load_file(cfg.run_dir / "adapter" / "adapter_model.safetensors")
    best = load_file(cfg.run_dir / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors")
    last = load_file(cfg.run_dir / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors")
    assert saved.keys() == best.keys() and all(torch.equal(saved[k], best[k]) for k in saved)
    assert any(not torch.equal(saved[k], last[k]) for k in saved)
    curves = json.loads((cfg.run_dir / "loss_history.json").read_text())
    assert len(curves["history"]) == 4 and curves["eval"] == history
    card = (cfg.run_dir / "adapter" / "README.md").read_text()
    assert "- stopped at step 4: early stopping" in card and "- best step 2 (eval_loss" in card
    summary = run_summary(RunDir(cfg.run_dir))
    assert "stopped at step 4: early stopping" in summary and "best step 2: eval_loss" in summary
    # Interrupted after training, before metrics.json: the rerun resumes nothing, and still exports step 2's weights.
    (cfg.run_dir / "metrics.json").unlink()
    (cfg.run_dir / "adapter").rename(tmp_path / "old-adapter")
    again = pipeline.run_training(cfg)
    assert again["resumed_at_step"] == 4 and again["steps_this_run"] == 0 and again["best"]["step"] == 2
    assert again["stopped"]["reason"].startswith("early stopping")
    saved = load_file(cfg.run_dir / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(saved[k], best[k]) for k in saved)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["transformers", "unsloth"])
def test_freezing_keeps_frozen_weights_bit_identical(tmp_path, backend):
    """Full fine-tuning with embeddings and norms frozen and only layer 1 trainable: frozen weights do not move,
    layer 1's do, and the group counts printed before training say so (NEFTune and a warm-up ratio on)."""
    from unsloth_sft import pipeline

    cfg = small_config(
        tmp_path,
        f"model.backend={backend}",
        "finetune=full",
        "export.save_methods=[merged_16bit]",
        "train.learning_rate=0.001",
        "train.max_steps=3",
        "train.freeze=[embeddings, norms]",
        "train.trainable_layers=1-",
        "train.neftune_noise_alpha=5",  # pass-throughs that must not break a run on either backend
        "train.warmup_steps=0",
        "train.warmup_ratio=0.5",
        "train.lr_scheduler_type=cosine",
    )
    run = pipeline.start(cfg)
    model = run.loaded.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any("embed_tokens" in n for n in frozen) and any("norm" in n for n in frozen)
    assert any(".layers.0." in n for n in frozen)
    assert not any(".layers.1." in n and "norm" not in n for n in frozen)
    metrics = pipeline.fit(run)
    groups = metrics["params_by_group"]
    assert groups["embeddings"]["trainable"] == 0 < groups["embeddings"]["total"]
    assert groups["norms"]["trainable"] == 0
    assert 0 < groups["attention"]["trainable"] == groups["attention"]["total"] // 2  # one of two layers
    after = dict(model.named_parameters())
    assert all(torch.equal(before[n], after[n].detach()) for n in frozen)
    assert run.trainer.args.neftune_noise_alpha == 5 and metrics["steps"] == 3
    moved = [n for n in before if n not in frozen and not torch.equal(before[n], after[n].detach())]
    assert moved and all(".layers.1." in n for n in moved)


def test_freeze_pattern_that_matches_nothing(tmp_path):
    from tests.conftest import load_model

    cfg = small_config(
        tmp_path,
        "model.backend=transformers",
        "finetune=full",
        "export.save_methods=[merged_16bit]",
        "train.freeze=['*.no_such_module.*']",
    )
    with pytest.raises(ModelError, match=r"train.freeze '\*.no_such_module.\*' matches no parameter"):
        load_model(cfg)
    cfg = small_config(
        tmp_path,
        "model.backend=transformers",
        "finetune=full",
        "export.save_methods=[merged_16bit]",
        "train.freeze=['*']",
    )
    with pytest.raises(ModelError, match="freeze every parameter"):
        load_model(cfg)


@pytest.mark.parametrize("backend", ["transformers", "unsloth"])
def test_lora_presets_layers_and_dora(tmp_path, backend):
    """target_modules: attention -> only attention projections; layers_to_transform: 1 -> only layer 1;
    use_dora -> peft's magnitude vectors (both backends pass it through)."""
    from tests.conftest import load_model
    from unsloth_sft.models.params import params_by_group

    cfg = small_config(
        tmp_path,
        f"model.backend={backend}",
        "lora.target_modules=attention",
        "lora.layers_to_transform=[1]",
        "lora.use_dora=true",
        "lora.use_rslora=true",
        "lora.dropout=0.1",
    )
    model = load_model(cfg).model
    lora = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert lora and all(".layers.1." in n for n in lora)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert any("lora_magnitude_vector" in n for n in lora)
    peft_cfg = model.peft_config["default"]
    assert peft_cfg.use_dora and peft_cfg.use_rslora and peft_cfg.lora_dropout == 0.1
    assert params_by_group(model)["lora"]["trainable"] > 0


def test_mlp_preset_resolves_to_the_models_mlp_layers(tmp_path):
    from tests.conftest import load_model

    cfg = small_config(tmp_path, "model.backend=transformers", "lora.target_modules=mlp")
    model = load_model(cfg).model
    assert set(model.peft_config["default"].target_modules) == {"gate_proj", "up_proj", "down_proj"}


def test_eval_during_training_computes_logits_at_trained_positions_only(tmp_path, monkeypatch):
    """The Trainer's evaluation on a CPU goes through the same lean loss as training: the head only at the positions
    that predict a trained token (a 262k-vocabulary model's full eval logits would be GBs), never the full logits."""
    from unsloth_sft import pipeline
    from unsloth_sft.training import loss
    from unsloth_sft.training.trainer import build_trainer

    cfg = small_config(tmp_path, "model.backend=transformers", "train.eval_steps=2")
    run = pipeline.start(cfg)
    trainer = build_trainer(cfg, run.loaded.model, run.loaded.tokenizer, run.data.train, run.data.test)
    rows, head_calls = [], []
    real_head_nll = loss.head_nll

    def counting_head_nll(hidden_rows, weight, targets, softcap=None):
        rows.append(hidden_rows.shape[0])
        return real_head_nll(hidden_rows, weight, targets, softcap)

    monkeypatch.setattr(loss, "head_nll", counting_head_nll)
    head = run.loaded.model.get_output_embeddings()
    hook = head.register_forward_hook(lambda module, args, out: head_calls.append(args[0].shape))
    try:
        result = trainer.evaluate()
    finally:
        hook.remove()
    positions = sum(len(ids) for ids in run.data.test["input_ids"])
    trained = sum(sum(1 for x in labels[1:] if x != -100) for labels in run.data.test["labels"])
    assert result["eval_loss"] > 0 and head_calls == []  # the lm_head module never ran on full hidden states
    assert sum(rows) == trained and 0 < trained < positions


# ---------------------------------------------------------------- model.chat_template


def test_chat_template_names_and_files(tmp_path, tokenizer):
    from unsloth_sft.models.chat_templates import check_markers, template_text, trl_templates

    assert {"gemma", "llama3", "qwen2_5"} <= set(trl_templates())
    assert "<start_of_turn>" in template_text("gemma", "transformers")
    jinja = tmp_path / "mine.jinja"
    jinja.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert template_text(str(jinja), "transformers") == jinja.read_text()
    with pytest.raises(ConfigError, match="no such Jinja file"):
        template_text(str(tmp_path / "missing.jinja"), "transformers")
    with pytest.raises(ConfigError, match="unsloth's \\(chatml, alpaca, mistral ...\\) on the unsloth backend"):
        template_text("chatml", "transformers")
    check_markers(tokenizer, template_text("gemma", "transformers"), "gemma")  # the tiny tokenizer has Gemma's
    with pytest.raises(ModelError, match=r"llama3 writes <\|end_header_id\|>, <\|eot_id\|>, <\|start_header_id\|>"):
        check_markers(tokenizer, template_text("llama3", "transformers"), "llama3")


def test_unsloth_catalogue_template_needs_the_models_tokens(tmp_path):
    """unsloth's chatml is found on the unsloth backend, and refused for a tokenizer without <|im_start|>."""
    pytest.importorskip("unsloth", reason="unsloth's catalogue needs unsloth installed")
    from tests.conftest import load_model

    cfg = small_config(tmp_path, "model.backend=unsloth", "model.chat_template=chatml")
    with pytest.raises(ModelError, match=r"chatml writes <\|im_end\|>, <\|im_start\|>, which this tokenizer has no"):
        load_model(cfg)


def test_bad_chat_template_fails_before_the_model_loads(tmp_path, monkeypatch):
    from unsloth_sft import pipeline
    from unsloth_sft.models import load as model

    cfg = small_config(tmp_path, "model.backend=transformers", "model.chat_template=no_such_template")
    monkeypatch.setattr(model, "load_base", lambda cfg: pytest.fail("the model loaded first"))
    with pytest.raises(ConfigError, match="model.chat_template 'no_such_template': not a .jinja file or a known"):
        pipeline.start(cfg)


@pytest.mark.slow
def test_chat_template_is_trained_on_and_travels_with_every_export(tmp_path):
    """A Jinja file's template renders the training rows, and the adapter and merged folders' tokenizers carry it
    (what eval and infer load), so the served model sees the format it was trained on."""
    from transformers import AutoTokenizer

    from unsloth_sft import pipeline
    from unsloth_sft.models.chat_templates import template_text

    jinja = tmp_path / "turns.jinja"  # TRL's Gemma template with another system-turn rule: visibly not the model's own
    jinja.write_text(template_text("gemma", "transformers").replace("System role not supported", "no system turns"))
    cfg = small_config(
        tmp_path,
        "model.backend=transformers",
        f"model.chat_template={jinja}",
        "train.max_steps=2",
        "export.save_methods=[lora, merged_16bit]",
    )
    run = pipeline.start(cfg)
    assert run.loaded.tokenizer.chat_template == jinja.read_text() and run.data.template == "chat"
    pipeline.fit(run)
    pipeline.finish(run)
    for folder in ("adapter", "merged"):
        assert AutoTokenizer.from_pretrained(cfg.run_dir / folder).chat_template == jinja.read_text(), folder


def test_epoch_evaluation_and_a_generation_metric_as_the_best(tmp_path):
    """eval_strategy: epoch saves at each epoch for the best checkpoint; a generation metric as the best model's
    metric is higher-is-better unless told otherwise."""
    from unsloth_sft.training.args import sft_config

    cfg = small_config(
        tmp_path,
        "train.eval_strategy=epoch",
        "train.eval_metric=rougeL",
        "train.metric_for_best_model=rougeL",
        "train.load_best_model_at_end=true",
    )
    args = sft_config(cfg, tmp_path / "ckpt", "transformers")
    assert (args.eval_strategy, args.save_strategy) == ("epoch", "epoch")
    assert args.metric_for_best_model == "eval_rougeL" and args.greater_is_better
    plain = sft_config(small_config(tmp_path), tmp_path / "ckpt", "transformers")
    assert (plain.eval_strategy, plain.save_strategy, plain.load_best_model_at_end) == ("no", "no", False)
    assert load_config(overrides=["train.eval_strategy=no"]).train.eval_strategy == "no"  # YAML 1.1 `no` is false
