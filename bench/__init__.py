"""The project's benchmarks, each run from the repository root: `python -m bench.cpu_synthetic` trains this
pipeline's variants (defaults, grouped, padding-free, packed, unsloth) against a naive pad-to-max pipeline and plain
TRL on the tiny and a ~15M random-init Gemma-2 on a CPU (bench/results/cpu.json, cpu.md); `python -m bench.cpu_real`
trains Gemma-3 270M with its CPU recipe against plain TRL and reports useful tokens per CPU second, MFU, held-out
loss and peak RSS (cpu-real.json, cpu-real.md); `python -m bench.gpu` compares the unsloth and transformers
backends on random-init Gemma-2 2B and 9B loaded 4-bit (tokens/s, peak VRAM, MFU, longest sequence; gpu-<gpu>.json,
.md); `python -m bench.generate` times batched against one-by-one greedy generation on a trained run
(generate.json); `bash bench/gemma_carve.sh` scores candidate settings of the Gemma-3 recipe on validation carves of
the training split. bench/README.md explains every figure.
"""
