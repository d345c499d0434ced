"""Where the package keeps what it builds once: the cache root (tiny model, converted GGUFs, tokenized data, tools)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("UNSLOTH_SFT_CACHE") or Path.home() / ".cache" / "unsloth_sft")  # empty = unset
