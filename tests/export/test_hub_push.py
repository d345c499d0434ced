"""Pushes to the Hub, against a loopback stand-in (tests/hub_stub.py): the bytes round-trip, each save of a
train.hub_strategy run goes up with its config and loss, and a failed push warns and is recorded, never fatal."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import small_config
from tests.hub_stub import FAKE_TOKEN, hub_stub  # noqa: F401 (the fixture)


def test_the_stub_round_trips_a_folder_through_huggingface_hub(hub_stub, tmp_path):  # noqa: F811
    """create_repo, upload_folder (preupload + commit), list_repo_files, snapshot_download: the same bytes back."""
    from huggingface_hub import HfApi, snapshot_download

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    blobs = {"a.bin": os.urandom(70_000), "sub/b.txt": "नमस्ते\n".encode(), "README.md": b"---\nlicense: mit\n---\nhi\n"}
    for name, data in blobs.items():
        (src / name).write_bytes(data)
    api = HfApi()
    api.create_repo("me/stub", private=True, exist_ok=True)
    api.create_repo("me/stub", private=True, exist_ok=True)  # a second create is the Hub's 409, taken as fine
    api.upload_folder(folder_path=str(src), repo_id="me/stub", path_in_repo="up")
    assert sorted(api.list_repo_files("me/stub")) == sorted(f"up/{n}" for n in blobs)
    assert hub_stub.uploads == [{"repo": "me/stub", "message": "Upload folder using huggingface_hub",
                                 "files": {f"up/{n}": d for n, d in blobs.items()}, "deleted": []}]  # fmt: skip
    out = snapshot_download("me/stub", local_dir=tmp_path / "down", allow_patterns=["up/*"])
    assert {n: (tmp_path / "down" / "up" / n).read_bytes() for n in blobs} == blobs
    assert out == str(tmp_path / "down")


def test_push_folder_goes_up_and_a_refused_commit_is_one_line_without_the_token(hub_stub, tmp_path):  # noqa: F811
    from unsloth_sft.core.errors import RunError
    from unsloth_sft.export.hub import push_folder

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    url = push_folder(tmp_path / "adapter", "me/model", path_in_repo="adapter")
    assert url.startswith(hub_stub.url) and "/me/model/commit/" in url
    assert hub_stub.files("me/model") == {"adapter/adapter_model.safetensors": b"weights"}
    hub_stub.fail("commit", 500)
    with pytest.raises(RunError, match="push to me/model failed: .*500") as err:
        push_folder(tmp_path / "adapter", "me/model")
    assert "\n" not in str(err.value) and FAKE_TOKEN not in str(err.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.hub_strategy=checkpoint", "train.save_steps=2"], "export.push_to_hub, which is unset"),
        (["train.hub_strategy=checkpoint", "export.push_to_hub=me/run"], "set train.save_steps"),
        (["train.hub_strategy=sometimes"], "hub_strategy"),
    ],
)
def test_hub_strategy_is_refused_without_a_repo_or_saves(tmp_path, overrides, message):
    from unsloth_sft.core.errors import ConfigError

    with pytest.raises(ConfigError, match=message) as err:
        small_config(tmp_path, *overrides)
    assert "\n" not in str(err.value)


def test_hub_strategy_without_a_token_stops_before_training(tmp_path, monkeypatch):
    from unsloth_sft import pipeline
    from unsloth_sft.core.errors import RunError

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    cfg = small_config(tmp_path, "train.hub_strategy=checkpoint", "train.save_steps=2", "export.push_to_hub=me/run")
    with pytest.raises(RunError, match="no Hugging Face token: set the HF_TOKEN"):
        pipeline.begin(cfg)
    assert not cfg.run_dir.exists()


def last_checkpoint_steps(hub, repo: str) -> list[int]:
    """The step of each last-checkpoint/ the repo received, in commit order."""
    return [
        json.loads(u["files"]["last-checkpoint/trainer_state.json"])["global_step"]
        for u in hub.committed(repo, "last-checkpoint/")
    ]


@pytest.mark.slow
def test_hub_strategy_checkpoint_pushes_each_save_with_config_and_loss(hub_stub, tmp_path, capsys):  # noqa: F811
    from unsloth_sft import pipeline

    cfg = small_config(
        tmp_path, "train.hub_strategy=checkpoint", "train.save_steps=2", "export.push_to_hub=me/run", "model.backend=transformers"
    )  # fmt: skip
    metrics = pipeline.run_training(cfg)
    assert last_checkpoint_steps(hub_stub, "me/run") == [2, 4, 6]
    files = hub_stub.files("me/run")
    checkpoint = cfg.run_dir / "checkpoints" / "checkpoint-6"
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json", "rng_state.pth"):
        assert files[f"last-checkpoint/{name}"] == (checkpoint / name).read_bytes(), name
    assert files["config.yaml"] == (cfg.run_dir / "config.yaml").read_bytes()
    assert [h["step"] for h in json.loads(files["loss_history.json"])["history"]] == [1, 2, 3, 4, 5, 6]
    assert files["adapter_model.safetensors"] == (cfg.run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    assert not any(FAKE_TOKEN.encode() in data for data in files.values())  # the token is never in a pushed file
    record = metrics["hub_pushes"]
    assert record["failed"] == [] and [(p["step"], p["what"]) for p in record["pushes"]] == [
        (s, w) for s in (2, 4, 6) for w in ("weights", "last-checkpoint/")
    ]
    assert json.loads((cfg.run_dir / "hub_pushes.json").read_text()) == record
    assert "hub: 6 of 6 pushes to me/run went up while training (checkpoint)" in capsys.readouterr().out


@pytest.mark.slow
def test_a_failed_push_warns_with_the_reason_and_training_goes_on(hub_stub, tmp_path, capsys):  # noqa: F811
    from unsloth_sft import pipeline

    hub_stub.fail("commit", 500, times=2)  # the first save's two uploads; the later ones and the export's go up
    cfg = small_config(
        tmp_path, "train.hub_strategy=checkpoint", "train.save_steps=2", "export.push_to_hub=me/run", "model.backend=transformers"
    )  # fmt: skip
    metrics = pipeline.run_training(cfg)
    assert metrics["steps"] == 6 and (cfg.run_dir / "metrics.json").is_file()
    err = capsys.readouterr()
    reason = "HfHubHTTPError: Server error '500 Internal Server Error' for url"
    assert f"unsloth-sft: warning: push of step 2 (weights) to me/run failed: {reason}" in err.err
    assert "push of step 2 (last-checkpoint/) to me/run failed" in err.err
    failed = metrics["hub_pushes"]["failed"]
    assert [(f["step"], f["what"]) for f in failed] == [(2, "weights"), (2, "last-checkpoint/")]
    assert all("500" in f["error"] for f in failed)
    assert "hub: 4 of 6 pushes to me/run went up while training (checkpoint); failed: step 2 weights" in err.out
    saved = json.loads((cfg.run_dir / "metrics.json").read_text())
    assert saved["hub_pushes"]["failed"] == failed and saved["exported"]["hub"].startswith(hub_stub.url)
    assert last_checkpoint_steps(hub_stub, "me/run") == [4, 6]


@pytest.mark.slow
def test_a_hub_that_cannot_be_reached_leaves_training_running(hub_stub, tmp_path, capsys):  # noqa: F811
    """The repo cannot be created: one warning, no push while training, the run still trains."""
    from unsloth_sft import pipeline

    hub_stub.fail("create", 503)
    cfg = small_config(
        tmp_path, "train.hub_strategy=every_save", "train.save_steps=3", "export.push_to_hub=me/run", "model.backend=transformers"
    )  # fmt: skip
    run = pipeline.start(cfg)
    try:
        metrics = pipeline.fit(run)  # training only: the final export's push would fail the same way, as a RunError
    finally:
        run.lock.release()
    assert metrics["steps"] == 6
    reason = "HfHubHTTPError: Server error '503 Service Unavailable' for url"
    assert f"warning: cannot create or reach me/run on the Hub ({reason}" in capsys.readouterr().err
    assert metrics["hub_pushes"]["failed"][0]["what"] == "create the repo" and hub_stub.uploads == []
