#!/usr/bin/env bash
# The validation-carve study behind params/cpu/gemma3-270m-hindi-summarization.yaml's settings (README, "Real
# models"): each variant trains on the TRAINING split minus a carve of 16 dialogues and is scored on the carve,
# never on the test split, with 2 seeds. train.seed also picks the carve, so the two seeds score on two different
# carves (a 2-fold estimate). ~5 min per variant and seed on 2 cores (40 steps ~3 min, eval ~2 min).
# Usage: bash bench/gemma_carve.sh 'NAME [KEY=VALUE ...]' ...   e.g.
#   bash bench/gemma_carve.sh recipe 'lr2e-3 train.learning_rate=0.002' 'neftune5 train.neftune_noise_alpha=5'
# Results: runs/gemma-carve/NAME-seedS/eval/metrics.json (logs beside it), and one line per run on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
recipe=params/cpu/gemma3-270m-hindi-summarization.yaml
train=src/unsloth_sft/samples/hindi-dialogsum/train.jsonl
mkdir -p runs/gemma-carve
for variant in "${@:-recipe}"; do
  read -r name settings <<<"$variant"
  sets=()
  for kv in $settings; do sets+=(--set "$kv"); done
  for seed in ${SEEDS:-3407 1}; do
    run=$name-seed$seed
    .venv/bin/unsloth-sft train "$recipe" --set run_name="$run" --set output_dir=runs/gemma-carve \
      --set data.source="$train" --set data.test_size=16 --set train.seed="$seed" \
      --set export.save_methods=[lora] --set overwrite=true ${sets[@]+"${sets[@]}"} >"runs/gemma-carve/$run.log" 2>&1
    .venv/bin/unsloth-sft eval --run "runs/gemma-carve/$run" >>"runs/gemma-carve/$run.log" 2>&1
    .venv/bin/python - "runs/gemma-carve/$run/eval/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]
print(sys.argv[1].split("/")[2], *(f"{k} {m[k]['tuned']:.4f}" for k in ("eval_loss", "rougeL", "chrf++")))
PY
  done
done
