"""model.adapter: a run continues an earlier run's LoRA adapter (trainable, on its base) from where it ended, records
where it started from, and a base that does not match the adapter is refused before training, naming both."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import load_model, small_config
from tests.hub_stub import hub_stub  # noqa: F401 (the fixture)
from unsloth_sft.core.errors import ConfigError, ModelError

pytestmark = pytest.mark.slow


def losses(run: Path) -> list[float]:
    return [row["loss"] for row in json.loads((run / "loss_history.json").read_text())["history"]]


def lora_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, tiny_path) -> Path:
    """Run A: 12 steps of LoRA on the tiny model, its adapter saved (the run every test here continues)."""
    from unsloth_sft.pipeline import run_training

    out = tmp_path_factory.mktemp("adapter-start")
    run_training(small_config(out, "run_name=a", "train.max_steps=12"))
    return out / "a"


@pytest.fixture(scope="module")
def other_base(tmp_path_factory, tiny_path) -> Path:
    """A Gemma-2 of another width (hidden 32, not 64) with the tiny model's tokenizer: a base A's adapter does not fit."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("other") / "gemma2-narrow"
    config = AutoConfig.from_pretrained(tiny_path)
    config.hidden_size, config.intermediate_size = 32, 64
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_path).save_pretrained(folder)
    return folder


def test_a_run_with_model_adapter_starts_from_the_earlier_runs_loss_and_says_so(earlier, tmp_path, capsys):
    """Run B continues A's adapter: its first loss is near A's last, clearly below a fresh LoRA's first loss.

    Same seed, same data order: B's first batch is A's first batch, so A's first logged loss is exactly what a fresh
    LoRA (B initialised to zero: the base's output) scores on it."""
    from unsloth_sft.pipeline import run_training

    capsys.readouterr()
    cfg = small_config(tmp_path, "run_name=b", "train.max_steps=2", f"model.adapter={earlier}", "lora.r=8")
    metrics = run_training(cfg)
    out = capsys.readouterr().out
    assert f"model.adapter {earlier}: continuing its LoRA (r 16" in out and "not the config's (lora.r 8)" in out
    fresh_first, a_last, b_first = losses(earlier)[0], losses(earlier)[-1], losses(tmp_path / "b")[0]
    assert fresh_first - a_last > 0.2  # A learned something to continue from
    assert b_first < fresh_first - 0.15, (fresh_first, a_last, b_first)
    assert abs(b_first - a_last) < (fresh_first - a_last) / 2, (fresh_first, a_last, b_first)

    import yaml

    b = tmp_path / "b"
    config = yaml.safe_load((b / "config.yaml").read_text())
    assert config["model"]["adapter"] == str(earlier) and config["lora"]["r"] == 16  # taken from the adapter
    a_metrics = json.loads((earlier / "metrics.json").read_text())
    origin = {
        "adapter": str(earlier),
        "path": str(earlier / "adapter"),
        "base_model": json.loads((earlier / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"],
        "run": str(earlier),
        "run_steps": 12,
        "run_last_loss": a_metrics["last_loss"],
    }
    assert metrics["started_from"] == origin
    assert json.loads((b / "environment.json").read_text())["started_from"] == origin
    card = (b / "adapter" / "README.md").read_text()
    assert (
        f"Started from adapter `{earlier}`, a run of 12 steps that ended at loss {a_metrics['last_loss']:.4f}" in card
    )
    before, after = lora_weights(earlier / "adapter"), lora_weights(b / "adapter")
    assert before.keys() == after.keys() and all(before[k].shape == after[k].shape for k in before)
    assert any(not before[k].equal(after[k]) for k in before)  # the loaded adapter trained on


@pytest.mark.parametrize("backend", ["transformers", "auto"])  # auto: unsloth where it imports (its CPU backend here)
def test_an_adapter_folder_and_a_hub_id_load_the_same_weights_trainable(
    earlier,
    tmp_path,
    monkeypatch,
    backend,
    hub_stub,  # noqa: F811 (the fixture)
):
    """model.adapter as A's adapter/ folder and as a Hub id (the loopback Hub holding that folder): the LoRA weights
    the model starts with are A's, byte for byte, and they are the trainable parameters."""
    from huggingface_hub import HfApi, constants

    from unsloth_sft.models.lora import with_adapter

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))  # not the user's cache
    api = HfApi()
    api.create_repo("me/a-adapter")
    api.upload_folder(folder_path=str(earlier / "adapter"), repo_id="me/a-adapter")
    api.create_repo("me/a-merged")  # merged weights at the top, the adapter under adapter/ (a push of both)
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="me/a-merged")
    api.upload_folder(folder_path=str(earlier / "adapter"), repo_id="me/a-merged", path_in_repo="adapter")
    want = lora_weights(earlier / "adapter")
    for given in (str(earlier / "adapter"), "me/a-adapter", "me/a-merged", "me/a-merged/adapter"):
        cfg, line = with_adapter(small_config(tmp_path, f"model.backend={backend}", f"model.adapter={given}"))
        assert line.startswith(f"model.adapter {given}: continuing its LoRA")
        loaded = load_model(cfg)
        params = {n: p for n, p in loaded.model.named_parameters() if "lora_" in n}
        assert params and all(p.requires_grad for p in params.values())
        got = {n.replace(".default", ""): p.detach() for n, p in params.items()}
        assert got.keys() == want.keys() and all(got[k].equal(want[k]) for k in want)
        if given.startswith("me/"):
            assert loaded.started_from["adapter"] == given and loaded.started_from["revision"]
            assert "run" not in loaded.started_from
    assert (tmp_path / "hub-cache").is_dir()


@pytest.mark.bad_input
def test_a_base_that_does_not_match_the_adapter_is_refused_with_exit_2_naming_both(
    earlier, other_base, tmp_path, capsys
):
    from unsloth_sft.app.cli import main

    args = ["train", str(earlier / "config.yaml")]
    for item in (f"output_dir={tmp_path}", "run_name=c", f"model.adapter={earlier}", f"model.name={other_base}"):
        args += ["--set", item]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    base = json.loads((earlier / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    line = err.strip().splitlines()[-1]
    assert line.startswith("unsloth-sft: error: ") and "Traceback" not in err
    assert f"trained on '{base}'" in line and f"not on model.name '{other_base}'" in line
    assert not (tmp_path / "c").exists()  # refused before the run folder was made


@pytest.mark.parametrize("four_bit", [False, True])
def test_the_shape_check_refuses_an_adapter_of_another_width_also_on_4bit_weights(
    earlier, other_base, tmp_path, four_bit
):
    """An adapter whose adapter_config.json names this base (a copy edited, or two models of one name) but whose
    matrices do not fit: refused by shape before it attaches. 4-bit layers keep their packed weight as [n, 1], so
    the shapes come from in/out features; the matching adapter passes on 4-bit weights too."""
    from unsloth_sft.models.load import check_adapter_base, load_base
    from unsloth_sft.models.lora import add_lora

    copy = tmp_path / "renamed-adapter"
    shutil.copytree(earlier / "adapter", copy)
    settings = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**settings, "base_model_name_or_path": str(other_base)}))
    common = ["model.backend=transformers", f"model.load_in_4bit={str(four_bit).lower()}"]
    cfg = small_config(tmp_path, f"model.name={other_base}", f"model.adapter={copy}", *common)
    where = re.escape(str(other_base))
    refusal = rf"does not match model.name '{where}' \(.*: the adapter expects (128|64) inputs, the model has (64|32) "
    with pytest.raises(ModelError, match=refusal):
        add_lora(cfg, load_base(cfg))
    tiny = load_base(small_config(tmp_path, *common))
    check_adapter_base(str(earlier / "adapter"), tiny.model, "tiny-gemma2")  # the right base passes


@pytest.mark.bad_input
def test_model_adapter_is_refused_with_full_finetuning_and_where_no_adapter_is(earlier, tmp_path):
    from unsloth_sft.models.lora import with_adapter

    with pytest.raises(ConfigError, match="model.adapter .* continues a LoRA adapter, but finetune is full"):
        small_config(tmp_path, "finetune=full", f"model.adapter={earlier}")
    (tmp_path / "unfinished").mkdir()
    shutil.copy(earlier / "config.yaml", tmp_path / "unfinished" / "config.yaml")
    (tmp_path / "plain").mkdir()
    cases = {
        str(tmp_path / "unfinished"): "the run has no LoRA adapter (no adapter/ and no checkpoint: train it first)",
        str(tmp_path / "plain"): "neither a LoRA adapter folder (no adapter_config.json) nor a run folder",
        "no/such-adapter": "could not download the adapter",  # not a folder: a Hub id, and the Hub is offline
        "./missing": "no such folder, and not a Hub id",
    }
    for given, expected in cases.items():
        with pytest.raises(
            ModelError, match=rf"model.adapter '{re.escape(given)}': .*{re.escape(expected)}"
        ) as refused:
            with_adapter(small_config(tmp_path, f"model.adapter={given}"))
        assert "\n" not in str(refused.value)
    with pytest.raises(ModelError, match="is this run's own folder; choose another run_name"):
        with_adapter(small_config(earlier.parent, "run_name=a", f"model.adapter={earlier}"))
