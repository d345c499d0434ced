"""The Hugging Face Hub: the token from the environment only, and one folder uploaded."""

from __future__ import annotations

import os
from pathlib import Path

from unsloth_sft.core.errors import ConfigError, RunError


def hub_token() -> str | None:
    """The Hub token from HF_TOKEN or huggingface_hub's login cache; never from params."""
    from huggingface_hub import get_token

    return os.environ.get("HF_TOKEN") or get_token()


def check_push_token(cfg) -> None:
    """train.hub_strategy pushes while training: a token must be there before training starts, not a warning at
    every save (`end` is the final export's push, which says so itself)."""
    if cfg.train.hub_strategy not in (None, "end") and not hub_token():
        raise RunError(
            f"train.hub_strategy {cfg.train.hub_strategy} pushes to {cfg.export.push_to_hub} and there is no Hugging "
            "Face token: set the HF_TOKEN environment variable or run `hf auth login` (never put it in params)"
        )


def prepare_hub(cfg, folder) -> dict | None:
    """Before training: train.hub_strategy's token, then (train.resume: auto, no local checkpoint) the checkpoint it
    pushed, downloaded into the run folder (runs.hub_resume). Returns where it came from, or None."""
    from unsloth_sft.runs.hub_resume import pull_hub_checkpoint

    check_push_token(cfg)
    return pull_hub_checkpoint(cfg, folder)


def push_folder(
    folder: Path, repo_id: str, private: bool = True, endpoint: str | None = None, path_in_repo: str | None = None
) -> str:
    """Create the repo if needed and upload `folder` (to `path_in_repo`, else the repo's top); returns the commit URL.
    The token is never printed."""
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
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            path_in_repo=path_in_repo,
            commit_message="Upload with unsloth-sft",
        )
    except Exception as err:  # HTTP errors carry the URL, never the token; keep one line
        message = str(err).replace(token, "***").splitlines()[0][:300] if str(err) else type(err).__name__
        raise RunError(f"push to {repo_id} failed: {message}") from None
    return str(getattr(info, "commit_url", info))


def push_plan(methods: list[str], made: dict[str, str], repo_id: str) -> list[tuple[str, str, str, str | None]]:
    """What a push uploads, as (method, folder, repo, path in repo): exactly what `methods` asked for and made.

    The weights go to `repo_id`: merged/ at its top when asked (then adapter/ under `adapter/` when asked too), else
    adapter/; a full fine-tune, which has no adapter, pushes merged/ for `lora`. GGUF files (with their Modelfile and
    card) go to `REPO-GGUF` when weights go up too (the Hub's convention: one repo per format), else to `repo_id`;
    the LoRA GGUF folder (adapter, base GGUF, Modelfiles) follows the same rule, under `lora/` when gguf/ goes too.
    """
    merged = made.get("merged_16bit") if "merged_16bit" in methods else None
    adapter = made.get("lora") if "lora" in methods else None
    if "lora" in methods and adapter is None:  # finetune: full: the trained weights are merged/
        merged = merged or made.get("merged_16bit")
    plan: list[tuple[str, str, str, str | None]] = []
    if merged:
        plan.append(("merged_16bit", merged, repo_id, None))
    if adapter:
        plan.append(("lora", adapter, repo_id, "adapter" if merged else None))
    if "merged_4bit_forced" in methods and made.get("merged_4bit_forced"):
        plan.append(("merged_4bit_forced", made["merged_4bit_forced"], repo_id, "merged-4bit" if plan else None))
    gguf_repo = f"{repo_id}-GGUF" if plan else repo_id
    if "gguf" in methods and made.get("gguf"):
        plan.append(("gguf", made["gguf"], gguf_repo, None))
    if "lora_gguf" in methods and made.get("lora_gguf"):
        beside = any(method == "gguf" for method, *_ in plan)
        plan.append(("lora_gguf", made["lora_gguf"], gguf_repo, "lora" if beside else None))
    return plan
