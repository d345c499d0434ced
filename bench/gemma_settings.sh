#!/usr/bin/env bash
# How params/cpu/gemma3-270m-hindi-summarization.yaml's learning rate was chosen: on a validation carve of the
# TRAINING split only (16 of its 84 dialogues held out, seeded), never on the test split. Each candidate trains
# on the other 68 dialogues, then `unsloth-sft eval` scores base vs tuned on the 16 held out.
# Usage: bash bench/gemma_settings.sh [LR ...]   (default: 0.0005 0.001; ~20 min each on 2 cores)
# Candidates run one after another; results: runs/gemma-val/val-lrLR/eval/metrics.json.
set -euo pipefail
cd "$(dirname "$0")/.."
recipe=params/cpu/gemma3-270m-hindi-summarization.yaml
train=src/unsloth_sft/samples/hindi-dialogsum/train.jsonl
steps=${STEPS:-20}
for lr in "${@:-0.0005 0.001}"; do
  for one in $lr; do
    run=val-lr$one
    .venv/bin/unsloth-sft train "$recipe" --set run_name="$run" --set output_dir=runs/gemma-val \
      --set data.source="$train" --set data.test_size=16 --set train.learning_rate="$one" \
      --set train.max_steps="$steps" --set export.save_methods=[lora] --set overwrite=true
    .venv/bin/unsloth-sft eval --run "runs/gemma-val/$run"
  done
done
