#!/usr/bin/env bash
# The Python packages a CUDA machine without network needs for this project, as one carried archive:
# .gpu/site.tar.xz in the current checkout (or the folder given). Built for Python 3.12 on x86_64 Linux next to a
# CUDA 13 torch image that already holds torch 2.11, transformers 5.17, accelerate 1.15, huggingface_hub 1.33,
# tokenizers, triton, sentencepiece, sacrebleu, matplotlib, pyyaml, pandas, pyarrow (the lent GPU machine's image; see
# ../shared/STACK.md, "A GPU machine with no network"). It adds what training needs (unsloth, unsloth_zoo, trl, datasets,
# peft, bitsandbytes, pydantic, gguf, rouge-score, ...) and what the smoke run's notebook step needs (papermill,
# ipykernel, ipython and their own needs). Started from ../shared/tools/gpu-bundle.sh; the same for users on
# air-gapped GPU servers: build it where pip reaches PyPI, copy the archive over.
#
#   scripts/gpu-bundle.sh           # once, in the project's root: ~1.5 min, ~110 MB of wheels -> .gpu/site.tar.xz, 28 MB
# then the device run (device tool: carry [".gpu", ".cache/tiny-gemma2-KEY"] (`ls -d .cache/tiny-gemma2-*`, 1.4 MB: the
# random models reuse its tokenizer, else it is built there first, 1-3 min), timeout_s 600), from the project's root:
#   mkdir -p /tmp/site && tar -C /tmp/site -xJf .gpu/site.tar.xz && \
#   export PYTHONPATH=/tmp/site:$PWD/src UNSLOTH_DISABLE_STATISTICS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
#          PYTHONUNBUFFERED=1 && \
#   timeout 540 python3 -m bench.gpu --smoke --steps-timeout 240 --verbose --out /tmp/smoke --results "$OUT"; \
#   cp -r /tmp/smoke/logs /tmp/smoke/params.yaml "$OUT/"
# (results, written after every step, and the logs come back under $OUT; `python3 -m bench.gpu ...` runs the
# throughput benchmark the same way). These packages go first on PYTHONPATH, so the few that the image may hold
# already (requests, pygments) are these versions there.
set -euo pipefail
out=${1:-.gpu}
exclude="$(git rev-parse --git-dir 2>/dev/null || echo .git)/info/exclude"
grep -qx '/.gpu/' "$exclude" 2>/dev/null || { mkdir -p "$(dirname "$exclude")" && echo '/.gpu/' >> "$exclude"; }
wheels=$(mktemp -d); stage=$(mktemp -d)
trap 'rm -rf "$wheels" "$stage"' EXIT
pyver=(--python-version 3.12 --implementation cp --only-binary=:all:
       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# Training (as ../shared/tools/gpu-bundle.sh, seen to work on the lent H200).
pkgs=(unsloth==2026.10.9 unsloth_zoo==2026.10.9 trl==1.15.0 datasets==4.8.5 peft==0.21.2 bitsandbytes==0.50.2
      pydantic==2.14.4 pydantic_core==2.50.5 annotated_types typing_inspection gguf==0.19.0 nltk
      "dill<0.4.2" "multiprocess<0.70.20" tyro docstring_parser shtab typeguard json5 nest_asyncio structlog
      msgspec hf_transfer cut_cross_entropy torchao)
# The notebook step (papermill notebooks/train.ipynb): papermill 2.7 and ipykernel 7 with everything they import
# that the image lacks, at the versions the project's CPU environment runs. pyzmq, tornado, rpds-py, debugpy and
# charset-normalizer are binary (cp312 manylinux wheels); psutil, packaging, pyyaml, tqdm, python-dateutil,
# typing_extensions, click, certifi and idna are the image's own (torch, transformers, accelerate, pandas, hub).
pkgs+=(papermill==2.7.0 nbclient==0.11.0 nbformat==5.11.1 jupyter_client==8.10.0 jupyter_core==5.9.1
       traitlets==5.16.1 tenacity==9.2.1 entrypoints==0.4.2 fastjsonschema==2.22.3 jsonschema==4.26.0
       jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0 platformdirs==4.14.9
       requests==2.34.2 urllib3==2.8.0 charset-normalizer==3.5.3
       ipykernel==7.4.0 comm==0.2.3 debugpy==1.8.22 matplotlib-inline==0.2.2 nest-asyncio2==1.7.4 pyzmq==27.3.0
       tornado==6.6.1 ipython==9.19.1 ipython-pygments-lexers==1.1.1 pygments==2.21.0 jedi==0.20.1 parso==0.8.7
       pexpect==4.9.0 ptyprocess==0.7.0 prompt-toolkit==3.0.53 wcwidth==0.9.5 stack-data==0.6.3 executing==2.3.0
       asttokens==3.0.2 pure-eval==0.2.4)
python3 -m pip download -q --no-deps "${pyver[@]}" -d "$wheels" "${pkgs[@]}"
python3 -m pip wheel -q --no-deps rouge-score==0.1.2 -w "$wheels"   # sdist only upstream; pure Python
python3 -m pip install -q --no-index --no-deps --no-compile --target "$stage" "${pyver[@]}" "$wheels"/*.whl
# Not needed to train, evaluate or run a notebook, and too large to carry: unsloth's Studio web app (82 MB), the
# bitsandbytes builds for CUDA 11/12, ROCm and XPU (torch there is cu130), and the scripts' bin/ folder.
rm -rf "$stage/studio" "$stage/bin"
find "$stage/bitsandbytes" -maxdepth 1 -name 'libbitsandbytes_*.so' \
  ! -name '*_cpu.so' ! -name '*_cuda13*.so' -delete
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
mkdir -p "$out" && tar -C "$stage" -cJf "$out/site.tar.xz" .
echo "wrote $out/site.tar.xz ($(du -h "$out/site.tar.xz" | cut -f1)); carry [\"$out\"] in the device run"
