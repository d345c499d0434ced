"""The training notebook's install cell, run as Colab would run it (google.colab imported, pip and git recorded)
and as any other kernel would: it finds or clones the project, installs it with the gpu extra, and is a no-op
outside Colab. A real Colab runtime is not reachable from these machines (README, "Colab and GPUs")."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import ROOT

URL = "https://example.invalid/me/unsloth-sft.git"


def notebook_cell(heading: str) -> str:
    """The source of the code cell under a markdown heading of notebooks/train.py."""
    text = (ROOT / "notebooks" / "train.py").read_text(encoding="utf-8")
    return text.split(f"# ### {heading}", 1)[1].split("# %%", 1)[1].split("\n", 1)[1].split("# %% [markdown]", 1)[0]


def install_cell(
    repo_url: str | None = None, checkout: Path | None = None, drive_dir: str | None = None, mount: Path | None = None
) -> str:
    """The cell's source, with REPO_URL, CHECKOUT and DRIVE_DIR edited the way a user edits them (and Drive's mount
    point moved into the test's folder)."""
    cell = notebook_cell("Install (Colab only)")
    for name, value in (("REPO_URL", repo_url), ("CHECKOUT", checkout), ("DRIVE_DIR", drive_dir), ("_DRIVE", mount)):
        if value is not None:
            cell, n = re.subn(rf"^{name} = .*$", f"{name} = {str(value)!r}", cell, flags=re.M)
            assert n == 1
    return cell


@pytest.fixture
def commands(monkeypatch):
    """subprocess.run recorded; `git clone URL DEST` leaves a checkout at DEST, as git would."""

    class Ran(list):
        returncode = 0

    ran = Ran()

    def fake_run(argv, *args, **kwargs):
        ran.append([str(a) for a in argv])
        if argv[:2] == ["git", "clone"]:
            (Path(argv[-1]) / "src" / "unsloth_sft").mkdir(parents=True)
        return subprocess.CompletedProcess(argv, ran.returncode)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the cell prepends the checkout's src/
    return ran


@pytest.fixture
def colab(monkeypatch):
    """google.colab imported, as in a Colab kernel; its drive.mount records the mount point and makes the folder."""
    module = types.ModuleType("google.colab")
    module.drive = types.SimpleNamespace(mounts=[])

    def mount(point, *args, **kwargs):
        module.drive.mounts.append(point)
        (Path(point) / "MyDrive").mkdir(parents=True, exist_ok=True)

    module.drive.mount = mount
    monkeypatch.setitem(sys.modules, "google.colab", module)
    return module


def test_outside_colab_the_cell_does_nothing(commands, tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.chdir(tmp_path)
    path = list(sys.path)
    exec(install_cell(URL, tmp_path / "checkout"), {})
    assert commands == [] and Path.cwd() == tmp_path and sys.path == path


def test_a_fresh_colab_runtime_clones_the_repository_and_installs_it_with_the_gpu_extra(
    colab, commands, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # /content in Colab: no checkout above it
    checkout = tmp_path / "unsloth-sft"
    exec(install_cell(URL, checkout), {})
    assert commands == [
        ["git", "clone", "--depth", "1", URL, str(checkout)],
        [sys.executable, "-m", "pip", "install", "-q", "-e", f"{checkout}[gpu]"],
    ]
    assert sys.path[0] == str(checkout / "src") and Path.cwd() == checkout


def test_a_notebook_opened_inside_a_checkout_installs_that_checkout(colab, commands, tmp_path, monkeypatch):
    checkout = tmp_path / "drive" / "unsloth-sft"
    (checkout / "src" / "unsloth_sft").mkdir(parents=True)
    (checkout / "notebooks").mkdir()
    monkeypatch.chdir(checkout / "notebooks")
    exec(install_cell(checkout=tmp_path / "elsewhere"), {})  # REPO_URL left as shipped: not needed here
    assert commands == [[sys.executable, "-m", "pip", "install", "-q", "-e", f"{checkout}[gpu]"]]
    assert Path.cwd() == checkout


def test_a_checkout_already_at_checkout_is_not_cloned_again(colab, commands, tmp_path, monkeypatch):
    checkout = tmp_path / "unsloth-sft"
    (checkout / "src" / "unsloth_sft").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    exec(install_cell(URL, checkout), {})
    assert [c[:2] for c in commands] == [[sys.executable, "-m"]]


@pytest.mark.bad_input
def test_the_shipped_placeholder_url_stops_with_what_to_set(colab, commands, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="set REPO_URL in this cell"):
        exec(install_cell(checkout=tmp_path / "unsloth-sft"), {})
    assert commands == []


@pytest.mark.bad_input
@pytest.mark.parametrize("failing", ["git", "pip"])
def test_a_failed_clone_or_install_stops_with_one_plain_message(colab, commands, tmp_path, monkeypatch, failing):
    monkeypatch.chdir(tmp_path)
    checkout = tmp_path / "unsloth-sft"
    if failing == "pip":
        (checkout / "src" / "unsloth_sft").mkdir(parents=True)
    commands.returncode = 1
    with pytest.raises(RuntimeError, match="could not clone" if failing == "git" else "could not install"):
        exec(install_cell(URL, checkout), {})
    assert Path.cwd() == tmp_path


def test_the_gpu_extra_the_cell_installs_brings_unsloth():
    gpu = [r for r in metadata.requires("unsloth-sft") if re.search(r"extra\s*==\s*.gpu.", r)]
    assert {re.split(r"[=<>; ]", r)[0] for r in gpu} >= {"unsloth", "unsloth_zoo"}


def config_from_cells(namespace: dict, **parameters):
    """The notebook's RunConfig as its parameters and config cells make it, after the install cell ran in
    `namespace` (papermill's -p values given as `parameters`); no model, no run folder."""
    from unsloth_sft import notebook_config

    exec(notebook_cell("Parameters"), namespace)
    namespace.update(parameters)
    head = notebook_cell("Config").split("\nimport yaml", 1)[0]  # up to the imports and the run itself
    exec(head, namespace)
    return notebook_config(namespace["_given"], namespace["_DEFINED"])


def test_drive_dir_mounts_google_drive_and_puts_the_run_folders_there(colab, commands, tmp_path, monkeypatch):
    checkout = tmp_path / "unsloth-sft"
    (checkout / "src" / "unsloth_sft").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    mount = tmp_path / "content-drive"
    namespace = {}
    exec(install_cell(URL, checkout, "MyDrive/sft/runs", mount), namespace)
    runs = mount / "MyDrive" / "sft" / "runs"
    assert colab.drive.mounts == [str(mount)] and runs.is_dir() and namespace["_DRIVE_RUNS"] == str(runs)
    cfg = config_from_cells(namespace, run_name="on-drive")
    assert cfg.run_dir == runs / "on-drive"
    assert config_from_cells(namespace, output_dir=str(tmp_path / "mine")).output_dir == str(tmp_path / "mine")


def test_drive_dir_as_a_full_path_and_left_empty(colab, commands, tmp_path, monkeypatch):
    """ "/content/drive/MyDrive/x" means the same folder as "MyDrive/x"; "" (as shipped) mounts nothing."""
    checkout = tmp_path / "unsloth-sft"
    (checkout / "src" / "unsloth_sft").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    mount = tmp_path / "content-drive"
    namespace = {}
    exec(install_cell(URL, checkout, f"{mount}/MyDrive/x/", mount), namespace)
    assert namespace["_DRIVE_RUNS"] == str(mount / "MyDrive" / "x")
    colab.drive.mounts.clear()
    shipped = {}
    exec(install_cell(URL, checkout, mount=mount), shipped)  # DRIVE_DIR = "" as shipped
    assert colab.drive.mounts == [] and shipped["_DRIVE_RUNS"] is None
    assert config_from_cells(shipped).output_dir == "runs"


def test_outside_colab_drive_dir_mounts_nothing(commands, tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(install_cell(URL, tmp_path / "checkout", "MyDrive/runs", tmp_path / "drive"), namespace)
    assert namespace["_DRIVE_RUNS"] is None and not (tmp_path / "drive").exists() and commands == []
