"""unsloth-sft: notebook-first supervised fine-tuning with Unsloth, TRL and peft."""

__version__ = "0.1.0"

from unsloth_sft.errors import ConfigError, DataError, ModelError, RunError, SFTError  # noqa: E402

__all__ = ["ConfigError", "DataError", "ModelError", "RunError", "SFTError", "__version__"]
