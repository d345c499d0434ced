"""model.dtype auto by the CPU's flags (faked, so that any machine tests both answers), the line a run prints, the
dtype each backend loads in, bf16 autocast on a bf16 CPU, and environment.json's record of the choice."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, load_model, small_config
from unsloth_sft.core import hardware
from unsloth_sft.models import backends

BF16_CPU = ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]  # a Sapphire Rapids Xeon
AMD_AVX2 = ["avx2", "fma"]  # an AMD EPYC without bf16 units
AVX512_ONLY = ["avx2", "avx512f"]  # this kind of Xeon: AVX-512, no AVX512-BF16 / AMX


def fake_cpu(monkeypatch, flags: list[str]) -> None:
    info = {"model": "Fake CPU", "flags": [f for f in flags if f in hardware.SHOWN_FLAGS], "all_flags": flags}
    monkeypatch.setattr(hardware, "cpu_info", lambda: {**info, "cores": 2})


@pytest.mark.parametrize(
    "flags, expected",
    [(BF16_CPU, "bfloat16"), (["avx512_bf16"], "bfloat16"), (["amx_bf16"], "bfloat16")]
    + [(AMD_AVX2, "float32"), (AVX512_ONLY, "float32"), ([], "float32")],
)
def test_auto_picks_bf16_only_with_bf16_matmul_units(monkeypatch, flags, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fake_cpu(monkeypatch, flags)
    assert hardware.cpu_compute_dtype() == expected
    assert backends.dtype_name("auto") == expected
    assert backends.torch_dtype("auto") == getattr(torch, expected)
    assert backends.unsloth_dtype("auto") == getattr(torch, expected)  # unsloth gets ours on a CPU, not None
    assert backends.dtype_name("float32") == "float32" and backends.dtype_name("bfloat16") == "bfloat16"


def test_a_gpu_keeps_its_rule(monkeypatch):
    import torch

    fake_cpu(monkeypatch, AMD_AVX2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert backends.dtype_name("auto") == "float16"
    assert backends.unsloth_dtype("auto") is None  # unsloth's own rule on a GPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert backends.dtype_name("auto") == "bfloat16"


def test_the_start_line_names_the_choice_the_cpu_and_its_flags(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fake_cpu(monkeypatch, BF16_CPU)
    line = backends.dtype_line("auto")
    assert line.startswith("compute dtype bfloat16 (auto: CPU has amx_bf16 avx512_bf16)") and "Fake CPU" in line
    assert "avx512_bf16" in line.split(";")[1]
    fake_cpu(monkeypatch, AMD_AVX2)
    assert "compute dtype float32 (auto: no AMX-BF16 or AVX512-BF16" in backends.dtype_line("auto")
    assert backends.dtype_line("bfloat16").startswith("compute dtype bfloat16 (model.dtype)")


def test_environment_json_records_the_choice_and_the_cpu(monkeypatch):
    from unsloth_sft.training import outputs
    from unsloth_sft.training.outputs import environment

    fake_cpu(monkeypatch, AMD_AVX2)
    monkeypatch.setattr(outputs, "cpu_info", hardware.cpu_info)
    env = environment()
    assert env["dtype_auto"].startswith("float32 (no AMX-BF16") and env["cpu"].startswith("Fake CPU")
    assert env["cpu_flags"] == "avx2" and env["threads"] >= 1 and isinstance(env["allocator"], dict)


@pytest.mark.parametrize("backend", ["transformers", "unsloth"])
@pytest.mark.parametrize("flags, dtype", [(BF16_CPU, "bfloat16"), (AVX512_ONLY, "float32")])
def test_each_backend_loads_the_chosen_dtype(monkeypatch, tmp_path, backend, flags, dtype):
    if backend == "unsloth" and not backends.unsloth_available():
        pytest.skip("unsloth does not import here")
    fake_cpu(monkeypatch, flags)
    cfg = small_config(tmp_path, "model.name=tiny-gemma2", f"model.backend={backend}")
    model = load_model(cfg).model
    frozen = {str(p.dtype) for p in model.parameters() if not p.requires_grad}
    assert frozen == {f"torch.{dtype}"}, frozen


def test_sft_config_autocasts_only_on_a_bf16_cpu(monkeypatch, tmp_path):
    import torch

    from unsloth_sft.training.args import cpu_bf16

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = small_config(tmp_path)
    fake_cpu(monkeypatch, BF16_CPU)
    assert cpu_bf16(cfg) is True
    fake_cpu(monkeypatch, AMD_AVX2)
    assert cpu_bf16(cfg) is False
    assert cpu_bf16(small_config(tmp_path, "train.bf16=true")) is True  # the user's own setting wins
    fake_cpu(monkeypatch, BF16_CPU)
    assert cpu_bf16(small_config(tmp_path, "model.dtype=float32")) is False


BF16_STEP = """
import json, sys
from unsloth_sft.core import hardware
info = {"model": "Fake", "flags": ["avx512_bf16"], "all_flags": ["avx512_bf16"], "cores": 2}
hardware.cpu_info = lambda: info
from pathlib import Path
from tests.conftest import load_model, small_config
from unsloth_sft.data.examples import load_examples, prepare
from unsloth_sft.training.trainer import build_trainer
cfg = small_config(Path(sys.argv[1]), "model.name=tiny-gemma2", "model.backend=transformers", "train.max_steps=1",
                   "train.compile=false")
lm = load_model(cfg)
trainer = build_trainer(cfg, lm.model, lm.tokenizer, prepare(cfg, lm.tokenizer, load_examples(cfg)).train,
                        backend=lm.backend)
seen = []
lora_a = next(m for n, m in lm.model.named_modules() if n.endswith("q_proj.lora_A.default"))
lora_a.register_forward_hook(lambda m, a, o: seen.append([str(a[0].dtype), str(o.dtype)]))
trainer.train()
state = trainer.optimizer.state
print(json.dumps({
    "bf16": trainer.args.bf16,
    "frozen": sorted({str(p.dtype) for p in lm.model.parameters() if not p.requires_grad}),
    "lora": sorted({str(p.dtype) for p in lm.model.parameters() if p.requires_grad}),
    "adam": sorted({str(v.dtype) for s in state.values() for k, v in s.items() if k != "step"}),
    "lora_io": seen[0], "loss": trainer.state.log_history[0]["loss"],
}))
"""


@pytest.mark.slow
def test_a_bf16_cpu_trains_one_dtype_through_the_step(tmp_path):
    """Faked bf16 flags, transformers backend, in a fresh process (unsloth, once imported, patches the Trainer's
    bf16 off on a CPU without bf16 units): frozen weights bf16, LoRA master weights and Adam state fp32, and the
    LoRA layers see bf16 activations (no cast of each activation to fp32 and back)."""
    import json

    done = subprocess.run(
        [sys.executable, "-c", BF16_STEP, str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["bf16"] is True and got["frozen"] == ["torch.bfloat16"]
    assert got["lora"] == ["torch.float32"] and got["adam"] == ["torch.float32"]
    assert got["lora_io"] == ["torch.bfloat16", "torch.bfloat16"]
    assert 0 < got["loss"] < 20
