"""Shared fixtures: no network, one tiny model per machine (cached), small configs."""

from __future__ import annotations

import inspect
import os
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# No test may touch the network: every Hub client is told so before it is imported.
for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[var] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("UNSLOTH_SFT_CACHE", str(ROOT / ".cache"))  # the tiny model is built once (~30 s), then reused
os.environ.pop("HF_TOKEN", None)


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    from unsloth_sft.models.tiny import tiny_model_path

    return tiny_model_path()


@pytest.fixture(scope="session")
def tokenizer(tiny_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_path)


def small_config(tmp_path: Path, *overrides: str, params: str | None = None):
    """A fast config on the tiny model in tmp_path (16-bit LoRA, few steps) plus dotted overrides."""
    from unsloth_sft.config.load import load_config

    base = [
        f"output_dir={tmp_path}",
        "run_name=t",
        "model.load_in_4bit=false",
        "model.max_seq_length=768",
        "train.max_steps=6",
        "train.per_device_train_batch_size=4",
        "train.gradient_accumulation_steps=1",
        "train.learning_rate=0.005",
        "train.optim=adamw_torch",
        "train.warmup_steps=0",
        "eval.max_new_tokens=8",
        "export.save_methods=[lora]",
    ]
    return load_config(params, overrides=base + list(overrides))


def load_model(cfg):
    """The base with LoRA attached (unless fine-tuning fully), as the pipeline's load_base and add_lora stages do."""
    from unsloth_sft.models.load import load_base
    from unsloth_sft.models.lora import add_lora

    return add_lora(cfg, load_base(cfg))


# A bad-input case: a test that feeds wrong input or a fault and asserts the one-line refusal. They are counted
# at the end of every run ("bad-input cases: N passed"), so the size of that suite is visible in CI's output.
BAD_INPUT = re.compile(
    r"assert_bad\(|assert_refused\(|config_error\(|pytest\.raises\((ConfigError|DataError|ModelError|RunError|SFTError)"
)


def pytest_collection_modifyitems(config, items):
    sources: dict = {}
    for item in items:
        function = getattr(item, "function", None)
        if function is None:
            continue
        if function not in sources:
            try:
                sources[function] = inspect.getsource(function)
            except (OSError, TypeError):
                sources[function] = ""
        if BAD_INPUT.search(sources[function]):
            item.add_marker(pytest.mark.bad_input)


def pytest_terminal_summary(terminalreporter):
    counts = {
        outcome: sum("bad_input" in report.keywords for report in terminalreporter.stats.get(outcome, []))
        for outcome in ("passed", "failed", "skipped")
    }
    if any(counts.values()):
        terminalreporter.write_line(
            f"bad-input cases: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
        )


CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; scripts/setup.sh installs it when apt-get is there
# Chromium on a machine with a closed network: no sandbox as root, no background connections, a fresh profile.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium, headless, through Playwright (never its own downloaded browser)."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no browser: {CHROMIUM} not found (scripts/setup.sh installs it: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed: pip install -e '.[test]'")
    with sync_api.sync_playwright() as p:
        profile = ROOT / ".cache" / f"chromium-profile-{os.getpid()}"  # a fresh --user-data-dir for each run
        shutil.rmtree(profile, ignore_errors=True)
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)
