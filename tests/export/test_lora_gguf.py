"""The LoRA adapter as GGUF (export.save_methods: [lora_gguf]): llama.cpp's convert_lora_to_gguf.py, a base GGUF
beside it, a Modelfile with FROM + ADAPTER, the push plan, the refusals, and the pair run in llama.cpp with --lora."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import small_config
from unsloth_sft.core.errors import ConfigError, ModelError
from unsloth_sft.export.gguf import llama_cpp_candidates

HAVE_CONVERTER = any((p / "convert_lora_to_gguf.py").is_file() for p in llama_cpp_candidates())
CLI = [sys.executable, "-m", "unsloth_sft"]


def field(reader, key):
    """A GGUF metadata value (string or number) through gguf-py."""
    f = reader.fields[key]
    value = f.parts[f.data[0]]
    return bytes(value).decode() if f.types[0].name == "STRING" else value.tolist()[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The tiny model trained with LoRA on the chat sample and exported as lora + lora_gguf (f16) at the end."""
    from unsloth_sft import pipeline

    if not HAVE_CONVERTER:
        pytest.skip("llama.cpp's LoRA converter is not unpacked (scripts/setup.sh does it)")
    cfg = small_config(
        tmp_path_factory.mktemp("lora-gguf"),
        "model.backend=transformers",
        "data.source=sample:chat",
        "export.save_methods=[lora, lora_gguf]",
        "export.gguf_quant=[f16]",
        "export.check_prompts=2",
    )
    pipeline.run_training(cfg)
    return cfg.run_dir


@pytest.mark.slow
def test_adapter_gguf_holds_the_lora_tensors(run_dir):
    """general.type adapter, adapter.type lora, alpha as trained, an A and a B per adapted weight in adapter/."""
    from safetensors import safe_open

    from unsloth_sft.models.gguf import open_gguf

    reader = open_gguf(run_dir / "lora-gguf" / "t-lora-f16.gguf")
    assert field(reader, "general.type") == "adapter" and field(reader, "adapter.type") == "lora"
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert field(reader, "adapter.lora.alpha") == pytest.approx(config["lora_alpha"])
    names = [t.name for t in reader.tensors]
    with safe_open(run_dir / "adapter" / "adapter_model.safetensors", "pt") as f:
        adapted = {k.split(".lora_")[0] for k in f.keys() if ".lora_A." in k}
    assert len(adapted) > 0 and len(names) == 2 * len(adapted)
    assert sum(n.endswith(".lora_a") for n in names) == sum(n.endswith(".lora_b") for n in names) == len(adapted)


@pytest.mark.slow
def test_modelfile_names_the_base_and_the_adapter(run_dir):
    """FROM the base GGUF (a model file, training's chat template), ADAPTER the adapter, both in the folder."""
    from unsloth_sft.models.gguf import open_gguf, read_metadata

    folder = run_dir / "lora-gguf"
    text = (folder / "t-lora-f16.Modelfile").read_text()
    lines = dict(line.split(" ", 1) for line in text.splitlines() if line.startswith(("FROM ", "ADAPTER ")))
    assert lines["ADAPTER"] == "./t-lora-f16.gguf"
    base = folder / lines["FROM"].removeprefix("./")
    assert base.is_file() and base.suffix == ".gguf" and base.parent == folder
    assert field(open_gguf(base), "general.type") == "model"
    adapter_template = json.loads((run_dir / "adapter" / "tokenizer_config.json").read_text()).get("chat_template")
    template = adapter_template or (run_dir / "adapter" / "chat_template.jinja").read_text()
    assert read_metadata(base)["chat_template"] == template
    assert 'PARAMETER stop "<end_of_turn>"' in text
    card = (folder / "README.md").read_text()
    assert "--lora t-lora-f16.gguf" in card and base.name in card
    check = json.loads((run_dir / "export_check.json").read_text())["lora_gguf"]
    assert set(check["adapters"]) == {"t-lora-f16.gguf"} and check["base"] == {
        "file": base.name,
        "made": True,
        "bytes": base.stat().st_size,
    }


@pytest.mark.slow
def test_llama_cpp_runs_the_adapter_with_lora(run_dir):
    """llama-server -m BASE --lora ADAPTER answers as base + adapter does in transformers (greedy, to the stop),
    and the base alone does not."""
    figures = json.loads((run_dir / "export_check.json").read_text())["lora_gguf"]["adapters"]["t-lora-f16.gguf"]
    runtime = figures["llama_cpp"]
    if "skipped" in runtime:
        pytest.skip(runtime["skipped"])
    assert "error" not in runtime, runtime
    assert runtime["prompts"] == 2 and runtime["greedy_equal"] == 2, runtime["differences"]
    assert runtime["without_lora_equal"] < 2  # without --lora llama.cpp answers otherwise: the adapter is applied


@pytest.mark.slow
def test_cli_export_lora_gguf_with_quant(run_dir, tmp_path):
    """`unsloth-sft export RUN --method lora_gguf --quant q8_0` rewrites lora-gguf/ with that type."""
    copy = tmp_path / "t"
    shutil.copytree(run_dir, copy)
    done = subprocess.run(
        [*CLI, "export", str(copy), "--method", "lora_gguf", "--quant", "q8_0"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    files = sorted(p.name for p in (copy / "lora-gguf").glob("*.gguf"))
    assert "t-lora-q8_0.gguf" in files and "t-lora-f16.gguf" not in files and len(files) == 2
    printed = next(json.loads(line) for line in done.stdout.splitlines() if line.startswith("{"))
    assert printed["lora_gguf"] == str(copy / "lora-gguf")


def test_full_fine_tune_asking_for_lora_gguf_is_refused(tmp_path):
    """No adapter, no LoRA GGUF: one line at load time, and one for a saved run without adapter/."""
    from unsloth_sft.export.plan import check_methods
    from unsloth_sft.runs.folder import RunDir

    with pytest.raises(ConfigError, match="lora_gguf.*finetune is full"):
        small_config(tmp_path, "finetune=full", "export.save_methods=[merged_16bit, lora_gguf]")
    cfg = small_config(tmp_path, "export.save_methods=[merged_16bit]")
    (tmp_path / "t" / "merged").mkdir(parents=True)
    with pytest.raises(ModelError, match="no adapter/; use gguf"):
        check_methods(["lora_gguf"], cfg, RunDir(tmp_path / "t"))


def test_dora_and_saved_modules_are_refused(tmp_path):
    """What llama.cpp's LoRA GGUF cannot hold is refused before any work, naming the fix."""
    from unsloth_sft.export.lora_gguf import check_adapter

    for extra, words in (({"use_dora": True}, "DoRA"), ({"modules_to_save": ["lm_head"]}, "lm_head")):
        (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16, **extra}))
        with pytest.raises(ConfigError, match=words):
            check_adapter(tmp_path)


def test_rslora_alpha_keeps_the_scale(tmp_path):
    """llama.cpp scales by alpha / r: a rank-stabilised adapter (alpha / sqrt(r)) is staged with alpha * sqrt(r)."""
    from unsloth_sft.export.lora_gguf import stage_adapter

    src = tmp_path / "adapter"
    src.mkdir()
    (src / "adapter_config.json").write_text(json.dumps({"r": 16, "lora_alpha": 8, "use_rslora": True}))
    (src / "adapter_model.safetensors").write_bytes(b"x")
    staged = json.loads((stage_adapter(src, tmp_path / "staged") / "adapter_config.json").read_text())
    assert staged["lora_alpha"] / staged["r"] == pytest.approx(8 / 16**0.5) and not staged["use_rslora"]
    assert (tmp_path / "staged" / "adapter_model.safetensors").resolve() == src / "adapter_model.safetensors"


def test_push_plan_puts_the_lora_gguf_with_the_ggufs():
    """Beside weights: REPO-GGUF (under lora/ when gguf/ goes too); alone: the repo itself."""
    from unsloth_sft.export.hub import push_plan

    made = {"lora": "/r/adapter", "gguf": "/r/gguf", "lora_gguf": "/r/lora-gguf"}
    assert push_plan(["lora", "gguf", "lora_gguf"], made, "u/m") == [
        ("lora", "/r/adapter", "u/m", None),
        ("gguf", "/r/gguf", "u/m-GGUF", None),
        ("lora_gguf", "/r/lora-gguf", "u/m-GGUF", "lora"),
    ]
    assert push_plan(["lora", "lora_gguf"], made, "u/m")[-1] == ("lora_gguf", "/r/lora-gguf", "u/m-GGUF", None)
    assert push_plan(["lora_gguf"], made, "u/m") == [("lora_gguf", "/r/lora-gguf", "u/m", None)]


def test_modelfile_with_a_base_outside_the_folder(tokenizer):
    """A base GGUF named where it lies (a packaged model's file) keeps its path; the adapter is the folder's."""
    from unsloth_sft.config.run import EvalConfig
    from unsloth_sft.export.modelfile import modelfile

    text = modelfile("t-lora-f16.gguf", tokenizer, "chat", EvalConfig(), base="/models/base.Q4_1.gguf")
    assert "FROM /models/base.Q4_1.gguf\nADAPTER ./t-lora-f16.gguf\n" in text
    assert "t-lora-f16.Modelfile" in text.splitlines()[0]


def test_base_gguf_is_named_when_the_base_came_from_one(tmp_path):
    """A base converted from one GGUF file: that file is the adapter's FROM; several parts (or none): exported."""
    from unsloth_sft.export.lora_gguf import source_gguf
    from unsloth_sft.models.gguf import SOURCE_FILE

    one = tmp_path / "base.Q4_1.gguf"
    one.write_bytes(b"GGUF")
    (tmp_path / SOURCE_FILE).write_text(json.dumps({"gguf": [str(one)]}))
    assert source_gguf(str(tmp_path)) == one
    (tmp_path / SOURCE_FILE).write_text(json.dumps({"gguf": [str(one), str(one)]}))
    assert source_gguf(str(tmp_path)) is None
    assert source_gguf(str(tmp_path / "plain")) is None
