"""Resume on a fresh runtime: the checkpoint train.hub_strategy pushed to export.push_to_hub, downloaded into the run
folder as checkpoints/checkpoint-N, where `train.resume: auto` then finds it like any local one.

Only for `train.resume: auto` with no local checkpoint and no overwrite. The repo's config.yaml (pushed with each
checkpoint) is compared first, as a local resume compares the run folder's: another config is refused with the keys
that differ, before a byte of the checkpoint is fetched. No repo, no checkpoint in it, another run's checkpoint, no
network: the run starts fresh, with one line saying why.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from unsloth_sft.core.errors import RunError
from unsloth_sft.core.files import atomic_write_text, move_dir_into_place, scratch_dir
from unsloth_sft.runs.folder import CONFIG, RunDir, refuse_changed_config

LAST_CHECKPOINT = "last-checkpoint"  # hub_strategy checkpoint; all_checkpoints pushes checkpoint-N/ folders
STATE = "trainer_state.json"
FROM_HUB = "from_hub.json"  # in a downloaded checkpoint: repo, folder, step, commit (the resume line and metrics)


def pull_hub_checkpoint(cfg, folder: RunDir) -> dict[str, Any] | None:
    """Download the Hub's newest pushed checkpoint into `folder` when this run should resume from it; returns
    {"repo", "path", "step", "commit", "checkpoint"} or None (one line says why not, when it looked)."""
    repo = cfg.export.push_to_hub
    if cfg.train.resume != "auto" or cfg.overwrite or repo is None or folder.is_finished:
        return None
    if folder.latest_checkpoint() is not None:
        return None  # a local checkpoint: the run resumes from it, as ever
    found, why = hub_checkpoint(repo)
    if found is None:
        print(f"resume: {why}; starting fresh", flush=True)
        return None
    commit, path = found
    saved, state = fetch_small(repo, commit, path)
    step = int(state.get("global_step") or 0)
    where = f"{path}/ of {repo} on the Hub (step {step}, commit {commit[:8]})"
    if saved is not None and saved.get("run_name") not in (None, cfg.run_name):
        print(f"resume: {where} belongs to run {saved['run_name']!r}, not {cfg.run_name!r}; starting fresh")
        return None
    if saved is not None:
        refuse_changed_config(saved, cfg, f"{folder.path}: cannot resume {where}", "push to another export.push_to_hub")
    target = folder.checkpoints / f"checkpoint-{step}"
    origin = {"repo": repo, "path": f"{path}/", "step": step, "commit": commit}
    download(repo, commit, path, target, origin)
    if saved is not None and not folder.config_file.is_file():  # a local resume's check finds the same config
        import yaml

        atomic_write_text(folder.config_file, yaml.safe_dump(saved, sort_keys=False, allow_unicode=True))
    note = "" if saved is not None else " (no config.yaml beside it: the config was not compared)"
    print(f"resume: from {where} -> {target}{note}", flush=True)
    return {**origin, "checkpoint": str(target)}


def hub_checkpoint(repo: str) -> tuple[tuple[str, str] | None, str]:
    """((commit, folder in the repo), "") for the newest complete checkpoint `repo` holds at its head, else
    (None, why): last-checkpoint/ first, else the highest checkpoint-N/."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().repo_info(repo, repo_type="model")
    except Exception as err:
        return None, unreachable(repo, err)
    names = [s.rfilename for s in info.siblings or []]
    if f"{LAST_CHECKPOINT}/{STATE}" in names:
        return (info.sha, LAST_CHECKPOINT), ""
    steps = [int(m.group(1)) for n in names if (m := re.fullmatch(rf"checkpoint-(\d+)/{STATE}", n))]
    if steps:
        return (info.sha, f"checkpoint-{max(steps)}"), ""
    return None, f"{repo} on the Hub holds no {LAST_CHECKPOINT}/ (train.hub_strategy: checkpoint pushes one)"


def unreachable(repo: str, err: Exception) -> str:
    """Why the repo could not be read, in words: not there yet, offline, no network, or the Hub's answer."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    if isinstance(err, RepositoryNotFoundError):
        return f"{repo} is not on the Hub yet (or this token cannot see it)"
    if isinstance(err, OfflineModeIsEnabled):
        return f"cannot look for a pushed checkpoint in {repo}: offline mode (HF_HUB_OFFLINE) is on"
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        return f"cannot look for a pushed checkpoint in {repo}: the Hub answered HTTP {err.response.status_code}"
    first = next((line for line in str(err).splitlines() if line.strip()), "")[:200]
    return f"cannot reach the Hub to look for a pushed checkpoint in {repo} ({type(err).__name__}: {first})"


def fetch_small(repo: str, commit: str, path: str) -> tuple[dict | None, dict]:
    """The repo's config.yaml (None when it has none) and the checkpoint's trainer_state.json, at `commit`."""
    import yaml
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    from unsloth_sft.core.paths import cache_root

    with scratch_dir(cache_root() / "hub-resume") as tmp:  # two small files, gone on return; nothing in the run yet

        def fetch(name: str) -> str:
            return Path(hf_hub_download(repo, name, revision=commit, local_dir=tmp)).read_text(encoding="utf-8")

        try:
            state = json.loads(fetch(f"{path}/{STATE}"))
            try:
                saved = yaml.safe_load(fetch(CONFIG))
            except EntryNotFoundError:
                saved = None
        except Exception as err:
            raise RunError(cannot_download(repo, path, err)) from None
    return (saved if isinstance(saved, dict) else None), state


def download(repo: str, commit: str, path: str, target: Path, origin: dict) -> None:
    """The checkpoint folder at `commit` into `target` with `origin` in it (FROM_HUB), whole or not at all (a work
    folder beside, then one rename)."""
    from huggingface_hub import snapshot_download

    with scratch_dir(target) as work:
        try:
            snapshot_download(
                repo, revision=commit, allow_patterns=[f"{path}/*"], local_dir=work / "repo", cache_dir=work / "cache"
            )
        except Exception as err:
            raise RunError(cannot_download(repo, path, err)) from None
        got = work / "repo" / path
        if not (got / STATE).is_file():
            raise RunError(f"{repo}: {path}/ came down without {STATE}; run again, or set train.resume: never")
        (got / FROM_HUB).write_text(json.dumps(origin, indent=2) + "\n", encoding="utf-8")  # inside the work folder
        move_dir_into_place(got, target)


def cannot_download(repo: str, path: str, err: Exception) -> str:
    """A checkpoint was found but did not come down: refuse, rather than start over and push over it."""
    first = next((line for line in str(err).splitlines() if line.strip()), "")[:200]
    return (
        f"{repo} on the Hub holds {path}/ but it could not be downloaded ({type(err).__name__}: {first}); run again "
        "to resume from it, or set train.resume: never to start over (the next push replaces it)"
    )
