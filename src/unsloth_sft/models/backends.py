"""The backend a run uses (unsloth's FastLanguageModel, or transformers + peft), imported in the right order."""

from __future__ import annotations

import importlib.util

from unsloth_sft.core.errors import ModelError
from unsloth_sft.core.quiet import silence_known_noise, stderr_to_stdout


def unsloth_available() -> bool:
    """True when unsloth can be imported here (on a GPU, or with unsloth 2026.10.9's CPU backend)."""
    if importlib.util.find_spec("unsloth") is None:
        return False
    try:
        import unsloth  # noqa: F401
    except Exception:  # old releases raise on a machine with no GPU
        return False
    return True


def choose_backend(requested: str) -> str:
    if requested == "transformers":
        return "transformers"
    if unsloth_available():
        return "unsloth"
    if requested == "unsloth":
        raise ModelError(
            "model.backend is unsloth but unsloth does not import here; pip install unsloth, or use backend: transformers"
        )
    return "transformers"


def torch_dtype(name: str):
    import torch

    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def import_backend(requested: str) -> str:
    """The backend a run will use; for unsloth, `import unsloth` now, before anything imports transformers,
    trl or peft (unsloth patches them on import, and warns when it comes second)."""
    silence_known_noise()
    with stderr_to_stdout():
        return choose_backend(requested)
