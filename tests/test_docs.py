"""Every command the README and the docs show is real: the CLI parses it, the notebooks, recipes, scripts and
benchmark modules it names exist. (test_notebooks.py runs README command 1's form; test_config.py runs every
recipe's header command through the same checks.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "bench" / "README.md"]
BLOCK = re.compile(r"```(?:bash|sh|console)\n(.*?)```", re.S)
PLACEHOLDER = re.compile(r"path/to/|^runs/|/NAME|USER/REPO|RUN_DIR|SWEEP_DIR|<[^>]+>|\.\.\.|\$")


def commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        if not doc.is_file():
            continue
        for block in BLOCK.findall(doc.read_text(encoding="utf-8")):
            text = re.sub(r"\\\n\s*", " ", block)  # continued lines
            for line in text.splitlines():
                line = line.split(" # ")[0].strip()
                if not line or line.startswith("#"):
                    continue
                for part in re.split(r"\s*(?:&&|;|\|\|)\s*", line):
                    found.append((f"{doc.relative_to(ROOT)}: {part}", part))
    return found


def words(command: str) -> list[str]:
    argv = shlex.split(command)
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):  # VAR=value in front
        argv = argv[1:]
    return argv


def must_exist(path: str) -> None:
    if not PLACEHOLDER.search(path):
        assert (ROOT / path).exists(), f"{path} does not exist"


@pytest.mark.parametrize("shown, command", commands(), ids=lambda x: x if len(x) < 90 else x[:87] + "...")
def test_shown_command_is_real(shown, command):
    from unsloth_sft.app.cli import parser

    argv = words(command)
    if not argv:
        return
    tool = Path(argv[0]).name
    if tool == "unsloth-sft":
        try:
            args = parser().parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"unsloth-sft does not take: {command}")
        for name in ("params", "notebook"):
            value = getattr(args, name, None)
            if isinstance(value, str):
                must_exist(value)
    elif tool == "papermill":
        must_exist(argv[1])
        if "-f" in argv:
            must_exist(argv[argv.index("-f") + 1])
    elif tool in ("python", "python3") and argv[1:2] == ["-m"]:
        module = argv[2]
        if module.startswith(("bench", "unsloth_sft")):
            base = ROOT / ("src" if module.startswith("unsloth_sft") else "") / module.replace(".", "/")
            assert base.with_suffix(".py").is_file() or (base / "__init__.py").is_file(), f"no module {module}"
    elif tool == "bash" and argv[1:]:
        must_exist(argv[1])


def test_the_docs_show_the_main_commands():
    shown = [c for _, c in commands()]
    assert any("unsloth-sft notebook notebooks/train.ipynb params/cpu/gemma3-270m" in c for c in shown)
    assert any(c.endswith("python -m pytest") for c in shown)
    assert len(shown) > 20


def test_the_configuration_page_names_every_key():
    import dataclasses

    from unsloth_sft.config import (
        DataConfig,
        EvalConfig,
        ExportConfig,
        LoraConfig,
        ModelConfig,
        RunConfig,
        SourceConfig,
        TrainConfig,
    )

    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    sections = (ModelConfig, LoraConfig, DataConfig, SourceConfig, TrainConfig, EvalConfig, ExportConfig, RunConfig)
    missing = [f"{c.__name__}.{f.name}" for c in sections for f in dataclasses.fields(c) if f"`{f.name}`" not in page]
    assert missing == []


def test_the_readme_is_a_guide_of_at_most_300_lines():
    """Reference pages live in docs/, studies in docs/experiments/: the README is what a user reads first."""
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300
