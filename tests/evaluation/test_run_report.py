"""Long work shows where it is, and a finished run has a page to look at: stage and step lines (loss, tokens/s,
ETA) stream from `train` and `notebook` while they run, with none of the libraries' noise unless --verbose; every
finished run folder holds report.md and report.html, and the page renders in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

DEMO = ROOT / "params" / "demo-cpu.yaml"
FAST = ["model.load_in_4bit=false", "train.optim=adamw_torch", "export.save_methods=[lora]", "eval.max_new_tokens=4"]
TIME = r"(?:\d\.\ds|\d+s|\d+m\d\ds|\d+h\d\dm)"  # core.progress.duration: 4.2s, 42s, 1m20s, 1h02m
STEP = re.compile(rf"^train: \d+/(\d+) steps \(\d+%\), loss [\d.]+, [\d,.]+ tok/s \| {TIME} elapsed, ETA {TIME}$")
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


@pytest.mark.parametrize("command", ["train", "notebook"])
def test_verbose_brings_the_libraries_output_back(tmp_path, command):
    args = [command, "--verbose", *(["notebooks/train.ipynb"] if command == "notebook" else []), DEMO]
    lines, code = streamed([*args, *sets(*FAST, "train.max_steps=2", f"output_dir={tmp_path}")], ROOT)
    text = "\n".join(line for line, _ in lines)
    assert code == 0, text[-3000:]
    assert re.search(STEP.pattern.strip("^$"), text)  # ours (the Trainer's bar shares the lines on stderr)
    if command == "train":
        assert "{'loss'" in text  # the Trainer's own log dicts
    else:  # in a notebook the Trainer shows its HTML table, not dicts: the libraries' bars and notices are back
        assert [noise for noise in NOISE if noise in text], text[-3000:]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """The tiny run trained and evaluated by the CLI: {"run": its folder, "eval": what `eval` printed}."""
    home = tmp_path_factory.mktemp("report")
    printed = {}
    for args in (
        ["train", DEMO, *sets(*FAST, "train.max_steps=4", f"output_dir={home}")],
        ["eval", "--run", home / "demo"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "unsloth_sft", *map(str, args)], cwd=home, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        printed[args[0]] = done.stdout
    return {"run": home / "demo", **printed}


@pytest.fixture(scope="module")
def evaluated(made) -> Path:
    return made["run"]


def test_eval_ends_by_naming_the_report(made):
    assert made["eval"].strip().splitlines()[-1] == f"report (open it in a browser): {made['run'] / 'report.html'}"


def test_export_streams_no_loading_noise_and_names_the_report(evaluated, tmp_path):
    run = tmp_path / "demo"
    shutil.copytree(evaluated, run)
    lines, code = streamed(["export", run, "--method", "merged_16bit"], tmp_path)
    text = "\n".join(line for line, _ in lines)
    assert code == 0, text[-3000:]
    assert [noise for noise in NOISE if noise in text] == [], text[-3000:]
    written = json.loads(lines[-2][0])  # the folders it wrote, as JSON, and the run's page
    assert written["merged_16bit"] == str(run / "merged") and written["report"] == str(run / "report.html")
    assert lines[-1][0] == f"report (open it in a browser): {run / 'report.html'}"  # the last line names the page
    assert "| merged | " in (run / "report.md").read_text(encoding="utf-8")


def test_the_report_says_what_the_run_did(evaluated):
    report = (evaluated / "report.md").read_text(encoding="utf-8")
    for section in ("## Recipe", "## Training", "## Evaluation: base → tuned", "## Exports", "## Environment"):
        assert section in report
    assert f"From `{DEMO}`" in report and "| train.max_steps | 60 | 4 |" in report  # what --set changed
    assert "![loss curve](loss.png)" in report and "| eval_loss |" in report and "### Examples side by side" in report
    assert "| adapter | " in report and "KiB" in report
    # float32 on a CPU, bfloat16 where it has bf16 units (AVX512-BF16, AMX)
    assert re.search(r"^\| compute_dtype \| (float32|bfloat16) \|$", report, re.MULTILINE)


def test_compute_dtype_is_what_training_computes_in():
    from types import SimpleNamespace

    import torch

    from unsloth_sft.training.outputs import compute_dtype

    model = torch.nn.Linear(4, 4)
    assert compute_dtype(model) == "float32"
    assert compute_dtype(model, SimpleNamespace(bf16=True, fp16=False)) == "bfloat16 (weights float32)"
    assert compute_dtype(model.to(torch.bfloat16)) == "bfloat16"
    model.config = SimpleNamespace(quantization_config={"load_in_4bit": True, "bnb_4bit_compute_dtype": "float16"})
    assert compute_dtype(model) == "float16 (4-bit base, weights bfloat16)"
    model.to(torch.float16)
    assert compute_dtype(model) == "float16 (4-bit base)"


def test_the_environment_section_shows_the_compute_dtype():
    from unsloth_sft.evaluation.run_report import environment_section

    text = environment_section({"python": "3.11", "device": "cpu (2 cores)", "compute_dtype": "bfloat16"})
    assert "| compute_dtype | bfloat16 |" in text


def test_compare_finds_runs_below_folders_of_any_name_but_not_inside_runs_or_a_sweeps_own_parts(tmp_path):
    from unsloth_sft.studies.compare import run_folders

    def run(rel: str) -> None:
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "config.yaml").write_text(f"run_name: {Path(rel).name}\n")

    for rel in ("evaluation-sweep/r1", "logs/r3", "eval/r4", "mine/checkpoints/r5", "r0", "r0/eval/r6", ".aside/r7"):
        run(rel)
    sweep = tmp_path / "sweep"
    (sweep / "variants").mkdir(parents=True)
    (sweep / "variants" / "a.yaml").write_text("run_name: a\n")
    (sweep / "sweep.yaml").write_text("sweep: {}\n")
    run("sweep/a")
    run("sweep/logs/stray")  # a sweep's own logs folder holds logs, not runs
    found = {str(folder.relative_to(tmp_path)): planned for folder, planned in run_folders(tmp_path)}
    assert found == {
        "evaluation-sweep/r1": None,
        "logs/r3": None,
        "eval/r4": None,
        "mine/checkpoints/r5": None,
        "r0": None,
        "sweep/a": sweep / "variants" / "a.yaml",
    }


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


def test_an_example_input_is_cut_at_a_word_not_inside_one():
    from unsloth_sft.evaluation.run_report import tail

    assert tail("short input") == "short input"
    text = "#Person1#: नमस्ते, मैंने पिछले हफ़्ते " * 40
    cut = tail(text, 100)
    assert cut.startswith("… ") and text.endswith(cut[2:]) and len(cut) <= 102
    assert cut[2:].split()[0] in text.split()  # a whole word first, never a vowel sign or half a syllable
    assert tail("x" * 700, 600) == "… " + "x" * 600  # no space at all: the plain cut
