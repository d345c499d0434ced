"""The Hugging Face Hub: the token from the environment only, and one folder uploaded."""

from __future__ import annotations

import os
from pathlib import Path

from unsloth_sft.core.errors import ConfigError, RunError


def hub_token() -> str | None:
    """The Hub token from HF_TOKEN or huggingface_hub's login cache; never from params."""
    from huggingface_hub import get_token

    return os.environ.get("HF_TOKEN") or get_token()


def push_folder(folder: Path, repo_id: str, private: bool = True, endpoint: str | None = None) -> str:
    """Create the repo if needed and upload `folder`; returns the commit URL. The token is never printed."""
    from huggingface_hub import HfApi

    if "/" not in repo_id:
        raise ConfigError(f"export.push_to_hub '{repo_id}' must look like user/repo")
    token = hub_token()
    if not token:
        raise RunError("no Hugging Face token: set the HF_TOKEN environment variable or run `huggingface-cli login`")
    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT"), token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message="Upload with unsloth-sft"
        )
    except Exception as err:  # HTTP errors carry the URL, never the token; keep one line
        message = str(err).replace(token, "***").splitlines()[0][:300] if str(err) else type(err).__name__
        raise RunError(f"push to {repo_id} failed: {message}") from None
    return str(getattr(info, "commit_url", info))
