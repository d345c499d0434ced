"""Every data shape trains through the CLI from its own recipe, and evaluates with its own metric."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {  # params/cpu/NAME.yaml -> (task, the metric its evaluation must report)
    "gsm8k": ("gsm8k", "exact_match"),
    "qa-json": ("qa", "rouge1"),
    "chat": ("chat", "chrf++"),
    "alpaca": ("instruction", "bleu"),
    "prompt-completion": ("completion", "rougeL"),
    "raw-text": ("text", "perplexity"),
}
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_trains_and_evaluates(name, tmp_path):
    from unsloth_sft.app.cli import main
    from unsloth_sft.config.load import load_config
    from unsloth_sft.evaluation.evaluate import evaluate_run

    overrides = [
        f"output_dir={tmp_path}",
        "train.max_steps=4",
        "eval.num_examples=2",
        "eval.max_new_tokens=4",
        "model.backend=transformers",
    ]
    args = ["train", str(ROOT / "params" / "cpu" / f"{name}.yaml")]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 0
    cfg = load_config(ROOT / "params" / "cpu" / f"{name}.yaml", overrides)
    metrics = json.loads((cfg.run_dir / "metrics.json").read_text())
    task, metric = RECIPES[name]
    assert metrics["task"] == task and metrics["steps"] == 4
    assert math.isfinite(metrics["last_loss"])
    result = evaluate_run(cfg, cfg.run_dir)
    assert metric in result["metrics"]
    assert all(math.isfinite(v) for v in result["metrics"][metric].values())


PACKING_CHECK = """
import sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from tests.conftest import load_model, small_config
from unsloth_sft.data.examples import prepare
from unsloth_sft.training.trainer import build_trainer

cfg = small_config(Path(sys.argv[1]), "data.source=sample:chat", "train.packing=true", "model.backend=transformers",
                   "model.max_seq_length=1024", "train.max_steps=2")
loaded = load_model(cfg)
data = prepare(cfg, loaded.tokenizer)
trainer = build_trainer(cfg, loaded.model, loaded.tokenizer, data.train, backend="transformers")
packed = trainer.train_dataset
assert type(trainer).__name__.startswith("SFTTrainer"), type(trainer)
assert len(packed) < len(data.train) and "seq_lengths" in packed.column_names, (len(packed), packed.column_names)
supervised = lambda rows: sorted(t for r in rows for t in r if t != -100)
assert supervised(packed["labels"]) == supervised(data.train["labels"])
assert all(sum(r["seq_lengths"]) == len(r["input_ids"]) for r in packed)
for row in packed:  # every example's first token (its <bos>) is unsupervised: no learning across neighbours
    starts = [sum(row["seq_lengths"][:i]) for i in range(len(row["seq_lengths"]))]
    assert all(row["labels"][s] == -100 for s in starts)
trainer.train()
assert trainer.state.global_step == 2
print("packing ok")
"""


def test_packing_keeps_each_examples_mask(tmp_path):
    """TRL's packing (transformers backend): packed rows hold exactly the unpacked examples' supervised tokens,
    with per-example lengths so positions restart at each example, and they train. Run in a fresh process:
    once unsloth is imported it replaces TRL's trainer and packs in its collator instead (checked by unsloth)."""
    import subprocess
    import sys

    script = tmp_path / "check.py"
    script.write_text(PACKING_CHECK)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(Path(__file__).parents[1])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "packing ok" in done.stdout, done.stderr[-3000:]
