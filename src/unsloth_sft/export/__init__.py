"""Export: `plan` is the one dispatcher (what to save, in which order, from a live model or a saved run); `weights`
saves adapters and merged weights, `gguf` runs llama.cpp's converter, `modelfile` writes Ollama's, `card` the
model cards, `check` proves each export computes the model that was evaluated, `hub` pushes."""
