"""Resume on a fresh runtime: `train.resume: auto` with no local checkpoint takes the checkpoint train.hub_strategy
pushed (the loopback Hub of tests/hub_stub.py), checked against the run's config like a local one."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.conftest import small_config
from tests.hub_stub import hub_stub  # noqa: F401 (the fixture)

REPO = "me/run"


def seed(tmp_path, saved: dict | None, steps=(4,), folder="last-checkpoint") -> dict[str, bytes]:
    """Push what a hub_strategy run pushes: config.yaml at the top, a checkpoint folder per step (or one
    last-checkpoint/ at the newest). Returns the files of the newest checkpoint."""
    import yaml
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(REPO, exist_ok=True)
    src = tmp_path / "seed"
    files = {}
    for step in steps:
        shutil.rmtree(src, ignore_errors=True)
        name = folder if folder == "last-checkpoint" else f"checkpoint-{step}"
        files = {"trainer_state.json": json.dumps({"global_step": step}).encode(), "optimizer.pt": os.urandom(5000)}
        for file, data in files.items():
            (src / name).mkdir(parents=True, exist_ok=True)
            (src / name / file).write_bytes(data)
        if saved is not None:
            (src / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
        api.upload_folder(folder_path=str(src), repo_id=REPO)
    return files


def test_a_pushed_checkpoint_comes_down_whole_as_the_runs_checkpoint(hub_stub, tmp_path, capsys):  # noqa: F811
    from unsloth_sft.runs.folder import RunDir
    from unsloth_sft.runs.hub_resume import pull_hub_checkpoint

    cfg = small_config(tmp_path, f"export.push_to_hub={REPO}", "train.save_steps=2")
    files = seed(tmp_path, cfg.to_dict())
    folder = RunDir(cfg.run_dir)
    got = pull_hub_checkpoint(cfg, folder)
    target = cfg.run_dir / "checkpoints" / "checkpoint-4"
    assert got == {
        "repo": REPO,
        "path": "last-checkpoint/",
        "step": 4,
        "commit": got["commit"],
        "checkpoint": str(target),
    }
    origin = json.loads((target / "from_hub.json").read_text())  # the resume line and metrics.json name it
    assert origin == {"repo": REPO, "path": "last-checkpoint/", "step": 4, "commit": got["commit"]}
    assert {p.name: p.read_bytes() for p in target.iterdir() if p.name != "from_hub.json"} == files
    assert folder.latest_checkpoint() == target and folder.saved_config() == cfg.to_dict()
    folder.check(cfg)  # the local resume check agrees
    assert f"resume: from last-checkpoint/ of {REPO} on the Hub (step 4, commit {got['commit'][:8]}) -> {target}" in (
        capsys.readouterr().out
    )
    assert sorted(p.name for p in cfg.run_dir.iterdir()) == ["checkpoints", "config.yaml"]  # no work folder left


def test_all_checkpoints_pushes_resume_from_the_highest(hub_stub, tmp_path):  # noqa: F811
    from unsloth_sft.runs.folder import RunDir
    from unsloth_sft.runs.hub_resume import pull_hub_checkpoint

    cfg = small_config(tmp_path, f"export.push_to_hub={REPO}", "train.save_steps=2")
    seed(tmp_path, cfg.to_dict(), steps=(2, 10, 6), folder="checkpoint-N")
    assert pull_hub_checkpoint(cfg, RunDir(cfg.run_dir))["path"] == "checkpoint-10/"


def test_a_pushed_checkpoint_of_another_config_is_refused_with_the_keys(hub_stub, tmp_path):  # noqa: F811
    from unsloth_sft.core.errors import RunError
    from unsloth_sft.runs.folder import RunDir
    from unsloth_sft.runs.hub_resume import pull_hub_checkpoint

    cfg = small_config(tmp_path, f"export.push_to_hub={REPO}", "train.save_steps=2")
    other = small_config(tmp_path, f"export.push_to_hub={REPO}", "train.learning_rate=0.001", "lora.r=8")
    seed(tmp_path, other.to_dict())
    with pytest.raises(RunError, match=r"cannot resume last-checkpoint/ of me/run on the Hub \(step 4") as err:
        pull_hub_checkpoint(cfg, RunDir(cfg.run_dir))
    assert "lora.r: 8 -> 16" in str(err.value) and "train.learning_rate: 0.001 -> 0.005" in str(err.value)
    assert "train.save_steps" not in str(err.value) and "\n" not in str(err.value)
    assert not cfg.run_dir.exists()  # refused before a byte was written


@pytest.mark.parametrize(
    "case, why",
    [
        ("no repo", "me/run is not on the Hub yet"),
        ("no checkpoint", "me/run on the Hub holds no last-checkpoint/"),
        ("another run", "belongs to run 'other', not 't'"),
        ("hub error", "the Hub answered HTTP 500"),
        ("offline", "offline mode (HF_HUB_OFFLINE) is on"),
        ("no network", "cannot reach the Hub to look for a pushed checkpoint in me/run (ConnectError"),
    ],
)
def test_no_pushed_checkpoint_starts_fresh_with_one_line(hub_stub, tmp_path, capsys, monkeypatch, case, why):  # noqa: F811
    from huggingface_hub import HfApi, constants

    from unsloth_sft.runs.folder import RunDir
    from unsloth_sft.runs.hub_resume import pull_hub_checkpoint

    cfg = small_config(tmp_path, f"export.push_to_hub={REPO}", "train.save_steps=2")
    if case == "no checkpoint":
        HfApi().create_repo(REPO)
    elif case == "another run":
        seed(tmp_path, {**cfg.to_dict(), "run_name": "other"})
    elif case == "hub error":
        hub_stub.fail("info", 500)
    elif case == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    elif case == "no network":
        hub_stub.close()  # nothing listens on its port any more
    assert pull_hub_checkpoint(cfg, RunDir(cfg.run_dir)) is None
    line = capsys.readouterr().out.strip()
    assert line.startswith("resume: ") and why in line and line.endswith("starting fresh") and "\n" not in line
    assert not (cfg.run_dir / "checkpoints").exists()


@pytest.mark.parametrize("setting", ["local checkpoint", "train.resume=never", "overwrite=true", "no repo set"])
def test_the_hub_is_not_asked_when_the_run_does_not_resume_from_it(hub_stub, tmp_path, setting):  # noqa: F811
    from unsloth_sft.runs.folder import RunDir
    from unsloth_sft.runs.hub_resume import pull_hub_checkpoint

    overrides = ["train.save_steps=2"] + ([] if setting == "no repo set" else [f"export.push_to_hub={REPO}"])
    cfg = small_config(tmp_path, *overrides, *([setting] if "=" in setting else []))
    if setting == "local checkpoint":
        (cfg.run_dir / "checkpoints" / "checkpoint-2").mkdir(parents=True)
        (cfg.run_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    assert pull_hub_checkpoint(cfg, RunDir(cfg.run_dir)) is None
    assert hub_stub.requests == []


@pytest.mark.slow
def test_a_fresh_runtime_resumes_from_the_step_it_pushed(hub_stub, tmp_path, capsys):  # noqa: F811
    """Train with hub_strategy: checkpoint; the runtime dies after step 4's push (the repo as it was then); the run
    folder is gone; training again resumes from the pushed step 4 and ends where the uninterrupted run ended."""
    from unsloth_sft import pipeline

    args = ["train.hub_strategy=checkpoint", "train.save_steps=2", f"export.push_to_hub={REPO}"]
    cfg = small_config(tmp_path, *args, "model.backend=transformers")
    straight = pipeline.run_training(cfg)
    commits = hub_stub.repos[REPO].commits
    at_4 = next(
        i
        for i, (_, files) in enumerate(commits)
        if json.loads(files.get("last-checkpoint/trainer_state.json", b'{"global_step": 0}'))["global_step"] == 4
    )
    hub_stub.rewind(REPO, at_4 + 1)  # what the Hub held when the runtime died
    shutil.rmtree(cfg.run_dir)
    capsys.readouterr()

    resumed = pipeline.run_training(cfg)
    out = capsys.readouterr().out
    checkpoint = cfg.run_dir / "checkpoints" / "checkpoint-4"
    assert f"resume: from last-checkpoint/ of {REPO} on the Hub (step 4, commit" in out
    assert f"Resuming from {checkpoint} (step 4), pulled from the Hub: {REPO} last-checkpoint/ at commit" in out
    assert resumed["resumed_at_step"] == 4 and resumed["steps"] == 6 and resumed["steps_this_run"] == 2
    assert resumed["resumed_from_hub"]["step"] == 4 and resumed["resumed_from_hub"]["repo"] == REPO
    assert resumed["last_loss"] == pytest.approx(straight["last_loss"], rel=1e-3, abs=1e-4)
    pushed = json.loads(hub_stub.files(REPO)["last-checkpoint/trainer_state.json"])
    assert pushed["global_step"] == 6  # the resumed run pushed on from there
