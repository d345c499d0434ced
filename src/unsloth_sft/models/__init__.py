"""Models: where `model.name` points (`sources`: tiny, packaged GGUF via `catalogue` and `gguf`, folder, Hub id), the
backend (`backends`), loading (`load`), LoRA (`lora`), parameter groups and freezing (`params`), chat templates, and
the token facts every stage asks (`tokens`: stop ids, the BOS rule)."""
