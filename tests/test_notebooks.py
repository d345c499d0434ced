"""Every notebook runs headless under papermill; pairs agree; bad parameters stop the notebook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_pairs_agree_and_are_clean(py):
    """The .ipynb is the .py in notebook form, with a parameters cell and no stored outputs."""
    nb = py.with_suffix(".ipynb")
    assert nb.is_file(), f"{nb} missing: jupytext --update --to ipynb {py}"
    as_py = subprocess.run(
        [BIN / "jupytext", "--to", "py:percent", "-o", "-", str(nb)], capture_output=True, text=True, check=True
    ).stdout
    assert as_py == py.read_text(encoding="utf-8"), f"run: jupytext --update --to ipynb {py}"
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in cells)
    assert all(not c.get("outputs") for c in cells if c["cell_type"] == "code")
    assert json.loads(nb.read_text())["metadata"]["kernelspec"]["name"] == "python3"


SECRET = "hf_NOTEBOOKsecret0123456789"


def _papermill(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # HF_TOKEN is in the environment, as on a user's machine: it must not reach the executed notebook.
    env = {**os.environ, "HF_TOKEN": SECRET}
    return subprocess.run(
        [str(BIN / "papermill"), *args, "--no-progress-bar"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The README's headless command, on the demo recipe (shortened with -p max_steps)."""
    work = tmp_path_factory.mktemp("nb")
    (work / "runs" / "demo").mkdir(parents=True)
    done = _papermill(
        str(ROOT / "notebooks/train.ipynb"),
        "runs/demo/train.ipynb",
        "-f",
        str(ROOT / "params/demo-cpu.yaml"),
        "-p",
        "max_steps",
        "8",
        cwd=work,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return work


@pytest.mark.slow
def test_train_notebook_writes_metrics(demo_run):
    run = demo_run / "runs" / "demo"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["task"] == "summarization"
    assert (run / "merged" / "model.safetensors").is_file() and (run / "adapter" / "adapter_config.json").is_file()
    executed = json.loads((run / "train.ipynb").read_text())
    text = json.dumps(executed["cells"], ensure_ascii=False)
    assert "[[" in text  # the masked-label preview was shown
    assert "image/png" in text  # the loss curve was displayed
    assert "before training" in text  # the side-by-side table
    assert "finished " in text and "unsloth-sft infer --run" in text  # the summary cell ends the notebook
    # the report's recipe is the -f sections: what changed is the -p shortcut and what the run resolved
    recipe = json.loads((run / "environment.json").read_text())["recipe"]
    assert recipe["sections"] is True and recipe["path"] is None
    assert {c["key"]: (c["recipe"], c["run"]) for c in recipe["changes"]}.get("train.max_steps") == (60, 8)
    assert {c["key"] for c in recipe["changes"]} <= {"train.max_steps", "data.template"}, recipe["changes"]
    assert "the recipe's sections given to papermill with -f" in (run / "report.md").read_text()
    for path in run.rglob("*"):  # executed notebook, config, cards, weights: the token is in none of them
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_evaluate_and_infer_notebooks(demo_run):
    for name in ("evaluate", "infer"):
        done = _papermill(
            str(ROOT / f"notebooks/{name}.ipynb"),
            f"runs/demo/{name}.ipynb",
            "-f",
            str(ROOT / "params/demo-cpu.yaml"),
            "-p",
            "overrides",
            '["eval.max_new_tokens=6", "eval.num_examples=4"]',
            cwd=demo_run,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((demo_run / "runs/demo/eval/metrics.json").read_text())
    assert report["metrics"]["eval_loss"]["tuned"] < report["metrics"]["eval_loss"]["base"]
    executed = json.dumps(json.loads((demo_run / "runs/demo/infer.ipynb").read_text())["cells"], ensure_ascii=False)
    assert "<start_of_turn>model" in executed  # the rendered prompt was printed


@pytest.mark.slow
def test_dataset_shortcut_and_unknown_parameter(demo_run, tmp_path):
    """-p dataset points the notebook at a local file; an unknown -p stops it with a one-line error."""
    rows = [
        {"संवाद": f"#Person1#: नमस्ते {i}\n#Person2#: जी {i}", "सारांश": f"दोनों ने {i} बार नमस्ते कहा।"} for i in range(12)
    ]
    csv = tmp_path / "mine.csv"
    import csv as csvlib

    with csv.open("w", newline="", encoding="utf-8") as f:
        w = csvlib.DictWriter(f, fieldnames=["संवाद", "सारांश"])
        w.writeheader()
        w.writerows(rows)
    (demo_run / "runs" / "mine").mkdir()
    done = _papermill(
        str(ROOT / "notebooks/train.ipynb"),
        "runs/mine/train.ipynb",
        "-f",
        str(ROOT / "params/demo-cpu.yaml"),
        "-p",
        "run_name",
        "mine",
        "-p",
        "dataset",
        str(csv),
        "-p",
        "max_steps",
        "3",
        "-p",
        "overrides",
        '["data.columns.dialogue=संवाद", "data.columns.summary=सारांश", "export.save_methods=[lora]"]',
        cwd=demo_run,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((demo_run / "runs/mine/metrics.json").read_text())["steps"] == 3
    (demo_run / "runs" / "bad").mkdir()
    bad = _papermill(
        str(ROOT / "notebooks/train.ipynb"),
        "runs/bad/train.ipynb",
        "-f",
        str(ROOT / "params/demo-cpu.yaml"),
        "-p",
        "run_name",
        "bad",
        "-p",
        "learning_rate",
        "0.1",
        cwd=demo_run,
    )
    assert bad.returncode != 0
    assert "unknown notebook parameter(s): learning_rate" in bad.stderr + bad.stdout
    assert not (demo_run / "runs/bad/config.yaml").exists()


@pytest.mark.slow
def test_unsloth_sft_notebook_command(tmp_path):
    """README command 1's form: `unsloth-sft notebook NOTEBOOK PARAMS --set ...` validates, runs, writes the run."""
    done = subprocess.run(
        [
            str(BIN / "unsloth-sft"),
            "notebook",
            str(ROOT / "notebooks/train.ipynb"),
            str(ROOT / "params/demo-cpu.yaml"),
            "--set",
            f"output_dir={tmp_path}",
            "--set",
            "train.max_steps=3",
            "--set",
            "overwrite=true",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "demo" / "train.ipynb").is_file()
    assert json.loads((tmp_path / "demo" / "metrics.json").read_text())["steps"] == 3
    assert f"finished {tmp_path / 'demo'}: 3 steps" in done.stdout  # a summary, not only the notebook's path
    assert f"unsloth-sft eval --run {tmp_path / 'demo'}" in done.stdout
    recipe = json.loads((tmp_path / "demo" / "environment.json").read_text())["recipe"]  # the report diffs the file
    assert recipe["path"] == str(ROOT / "params/demo-cpu.yaml")
    assert {c["key"] for c in recipe["changes"]} >= {"output_dir", "train.max_steps", "overwrite"}
    bad = subprocess.run(
        [
            str(BIN / "unsloth-sft"),
            "notebook",
            str(ROOT / "notebooks/train.ipynb"),
            str(ROOT / "params/demo-cpu.yaml"),
            "--set",
            "train.max_step=3",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "did you mean 'max_steps'" in bad.stderr
