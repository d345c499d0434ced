"""Long work shows where it is, and a finished run has a page to look at: stage and step lines (loss, tokens/s,
ETA) stream from `train` and `notebook` while they run, with none of the libraries' noise unless --verbose; every
finished run folder holds report.md and report.html, and the page renders in a real browser."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

DEMO = ROOT / "params" / "demo-cpu.yaml"
FAST = ["model.load_in_4bit=false", "train.optim=adamw_torch", "export.save_methods=[lora]", "eval.max_new_tokens=4"]
STEP = re.compile(r"^train: \d+/(\d+) steps \(\d+%\), loss [\d.]+, [\d,]+ tok/s \| [\d:]+ elapsed, ETA [\d:]+$")
NOISE = (
    "Kernel is running over TCP",
    "kernels-community",
    "Loading weights",
    "Truncating train dataset",
    "{'loss'",
    "Writing model shards",
    "IProgress not found",
)
pytestmark = pytest.mark.slow


def sets(*keys: str) -> list[str]:
    return [a for k in keys for a in ("--set", k)]


def streamed(args: list, cwd: Path, **env) -> tuple[list[tuple[str, bool]], int]:
    """Run the CLI and read its output as it comes: [(line, the process was still running)], exit status."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "unsloth_sft", *map(str, args)],
        cwd=cwd,
        env={**os.environ, "UNSLOTH_SFT_PROGRESS_S": "0.5", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append((line.rstrip("\n"), proc.poll() is None))
    return lines, proc.wait()


@pytest.mark.parametrize("command", ["train", "notebook"])
def test_stage_and_step_lines_stream_while_the_run_goes_on_and_no_noise(tmp_path, command):
    steps = 30
    args = [command, *(["notebooks/train.ipynb"] if command == "notebook" else []), DEMO]
    args += sets(*FAST, f"train.max_steps={steps}", f"output_dir={tmp_path}")
    lines, code = streamed(args, ROOT)
    text = "\n".join(line for line, _ in lines)
    assert code == 0, text[-3000:]
    for n, name in enumerate(["check the config", "load tiny-gemma2", "LoRA adapters", "tokenize", "train", "save"], 1):
        assert any(line.startswith(f"[{n}/6] {name}") for line, _ in lines), (name, text[-3000:])
    live = [line for line, running in lines if STEP.match(line) and running]
    assert live, "no step line arrived while the run was going on:\n" + text[-3000:]
    assert {STEP.match(line).group(1) for line in live} == {str(steps)}
    assert any(line.startswith(f"train: {steps}/{steps} steps (100%)") for line, _ in lines)
    assert [noise for noise in NOISE if noise in text] == []
    assert "report" in text and (tmp_path / "demo" / "report.html").is_file()


def test_verbose_brings_the_libraries_output_back(tmp_path):
    lines, code = streamed(
        ["train", "--verbose", DEMO, *sets(*FAST, "train.max_steps=2", f"output_dir={tmp_path}")], ROOT
    )
    text = "\n".join(line for line, _ in lines)
    assert code == 0, text[-3000:]
    assert "{'loss'" in text  # the Trainer's own log dicts
    assert re.search(STEP.pattern.strip("^$"), text)  # and ours (the Trainer's bar shares the lines on stderr)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("report")
    for args in (
        ["train", DEMO, *sets(*FAST, "train.max_steps=4", f"output_dir={home}")],
        ["eval", "--run", home / "demo"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "unsloth_sft", *map(str, args)], cwd=home, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
    return home / "demo"


def test_the_report_says_what_the_run_did(evaluated):
    report = (evaluated / "report.md").read_text(encoding="utf-8")
    for section in ("## Recipe", "## Training", "## Evaluation: base → tuned", "## Exports", "## Environment"):
        assert section in report
    assert f"From `{DEMO}`" in report and "| train.max_steps | 60 | 4 |" in report  # what --set changed
    assert "![loss curve](loss.png)" in report and "| eval_loss |" in report and "### Examples side by side" in report
    assert "| adapter | " in report and "KiB" in report


def test_the_report_page_renders_in_a_browser(evaluated, chromium):
    page = chromium.new_page()
    try:
        page.goto((evaluated / "report.html").as_uri())
        page.wait_for_load_state("load")
        loaded = page.evaluate("() => [...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0])")
        assert dict(loaded) == {"loss curve": True, "base vs tuned": True}
        header = page.locator("table").nth(2).locator("th").all_inner_texts()
        assert header == ["metric", "base", "tuned", "delta"]
        assert page.locator("td", has_text="eval_loss").count() >= 1
        if os.environ.get("UNSLOTH_SFT_SCREENSHOT"):  # how docs/report.png was made (the Gemma-3 recipe's run)
            page.screenshot(path=os.environ["UNSLOTH_SFT_SCREENSHOT"], full_page=True)
    finally:
        page.close()
