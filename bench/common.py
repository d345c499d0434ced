"""Helpers every benchmark uses: model shapes, worker processes, requirement checks, bisection, FLOPs, tables.

The helpers only the two CPU benchmarks share (data, token counting, timing, trainers) are in `bench.cpu_common`.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# Gemma-2 shapes as literal Gemma2Config kwargs. 2B and 9B are the released models' config.json values.
GEMMA2_2B = dict(
    vocab_size=256000,
    hidden_size=2304,
    intermediate_size=9216,
    num_hidden_layers=26,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    query_pre_attn_scalar=256,
    sliding_window=4096,
    max_position_embeddings=8192,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    hidden_activation="gelu_pytorch_tanh",
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
GEMMA2_9B = {
    **GEMMA2_2B,
    "hidden_size": 3584,
    "intermediate_size": 14336,
    "num_hidden_layers": 42,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
}
# ~14M parameters with the tiny tokenizer's 3,000-token vocabulary: big enough that matmuls, not Python, dominate.
SMALL_SHAPE = dict(
    hidden_size=384,
    num_hidden_layers=6,
    num_attention_heads=6,
    num_key_value_heads=2,
    head_dim=64,
    intermediate_size=1536,
    max_position_embeddings=4096,
    sliding_window=4096,
)
SMALL_NAME = "small-gemma2"

# Where each missing package's wheel comes from on a machine without network (see ../shared/STACK.md).
WHEEL_HINTS = {
    "unsloth": "unsloth==2026.10.9 (27.3 MB wheel; pip install --no-deps, with unsloth_zoo)",
    "unsloth_zoo": "unsloth_zoo==2026.10.9 (2.8 MB wheel; pip install --no-deps)",
    "trl": "trl==1.15.0 (0.9 MB wheel)",
    "datasets": "datasets==4.8.5 (0.6 MB wheel)",
    "bitsandbytes": "bitsandbytes==0.50.2 (41.1 MB wheel, manylinux_2_24 x86_64)",
    "peft": "peft==0.21.2",
    "accelerate": "accelerate==1.15.0",
    "transformers": "transformers==5.17.0",
    "torch": "torch (a CUDA build matching the driver)",
}


# ---------------------------------------------------------------- worker processes


def spawn(module: str, extra: list[str], json_out: Path, log: Path, cwd: Path = ROOT) -> tuple[int, Any]:
    """Run `python -m module` with `extra` arguments in a fresh process (output to `log`); its exit code and result.

    `cwd` is the repository root, where `bench` imports as a package. The worker writes its result to
    `--json-out`; on failure the result is None and the log's tail is printed.
    """
    cmd = [sys.executable, "-m", module, *extra, "--json-out", str(json_out)]
    with log.open("w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd).returncode
    if rc != 0 or not json_out.is_file():
        tail = log.read_text(errors="replace").splitlines()[-15:]
        print(f"  FAILED (exit {rc}); last lines of {log}:\n    " + "\n    ".join(tail), flush=True)
        return rc, None
    return rc, json.loads(json_out.read_text())


def cpu_device() -> str:
    """'CPU, <cores> cores, <model name>' (from /proc/cpuinfo; else the platform's processor or machine name)."""
    import os
    import platform

    name = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
        name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), name)
    except OSError:
        pass
    return f"CPU, {os.cpu_count()} cores, {name}"


def machine() -> dict:
    """The CPU model, its ISA flags and what model.dtype auto picks on it: saved in every benchmark result."""
    from unsloth_sft.core.hardware import cpu_info, dtype_reason
    from unsloth_sft.models.backends import dtype_name

    info = cpu_info()
    auto = dtype_name("auto")
    return {
        "model": info["model"],
        "flags": info["flags"],
        "cores": info["cores"],
        "dtype_auto": auto,
        "dtype_reason": dtype_reason(),
    }


# ---------------------------------------------------------------- requirements


def missing_packages(names: list[str]) -> list[str]:
    """The import names among `names` that are not installed here (find_spec only: nothing is imported)."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def requirements_message(missing: list[str]) -> str:
    """One paragraph naming each missing package and the wheel to carry over."""
    lines = [f"missing packages: {', '.join(missing)}. Install them from wheel files (no network needed):"]
    lines += [f"  - {name}: {WHEEL_HINTS.get(name, name)}" for name in missing]
    lines.append("  e.g. pip install --no-deps /path/to/wheels/*.whl")
    return "\n".join(lines)


# ---------------------------------------------------------------- model shapes


def gemma2_config(shape: dict, **extra):
    """A transformers Gemma2Config from a shape dict plus overrides (eager attention: Gemma-2's soft-capping)."""
    from transformers import Gemma2Config

    kwargs = {"attn_implementation": "eager", **shape, **extra}
    return Gemma2Config(**kwargs)


def count_parameters(config) -> int:
    """Parameters of a causal LM built from `config`, on the meta device (no memory, ~0.1 s for 9B)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def build_random_model(
    path: Path, shape: dict, tokenizer_path: Path, dtype: str = "float32", device: str = "cpu"
) -> Path:
    """Save a random-initialised Gemma-2 of `shape` (safetensors) with the tokenizer of `tokenizer_path`."""
    import torch
    from transformers import AutoTokenizer, Gemma2ForCausalLM

    path = Path(path)
    if (path / "config.json").is_file():
        return path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    ids = dict(
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    extra = {} if "vocab_size" in shape else {"vocab_size": len(tokenizer)}
    config = gemma2_config(shape, dtype=dtype, **ids, **extra)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # built in its dtype: a 9B in float32 would need 37 GB first
    try:
        with torch.device(device):
            model = Gemma2ForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    tmp = path.with_name(f".{path.name}.tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    del model
    tmp.rename(path)
    return path


def load_model(cfg):
    """The library's base model of `cfg` with its LoRA adapters: `add_lora(cfg, load_base(cfg))`."""
    from unsloth_sft.models.load import load_base
    from unsloth_sft.models.lora import add_lora

    return add_lora(cfg, load_base(cfg))


# ---------------------------------------------------------------- bisection


def longest_trainable(try_fn: Callable[[int], bool], lo: int, hi: int, step: int = 1) -> int | None:
    """The largest n in [lo, hi] (a multiple of `step` above lo) with try_fn(n) True, assuming monotone failure.

    try_fn(n) returns True when a sequence of n tokens trains, False when it runs out of memory. Returns None
    when even `lo` fails. Calls try_fn O(log((hi - lo) / step)) times.
    """
    if lo > hi or step < 1:
        raise ValueError(f"need lo <= hi and step >= 1, got lo={lo} hi={hi} step={step}")
    if not try_fn(lo):
        return None
    if try_fn(hi):
        return hi
    good, bad = 0, (hi - lo + step - 1) // step  # indices: lo + i * step; good passes, bad fails
    while bad - good > 1:
        mid = (good + bad) // 2
        if try_fn(lo + mid * step):
            good = mid
        else:
            bad = mid
    return lo + good * step


# ---------------------------------------------------------------- FLOPs and the matmul peak


def train_flops(tokens: int, logits_positions: int, nonembed_params: int, vocab: int, hidden: int) -> float:
    """Model FLOPs of LoRA training steps: forward + backward, backward ~= forward.

    Forward: 2 x non-embedding parameters (LoRA included) per token, plus 2 x vocab x hidden per position whose
    logits are computed (the output projection; the input embedding is a lookup). Backward: the activation
    gradients through the frozen weights cost about one forward; frozen weights need no weight gradient and the
    LoRA ones are ~1 % of the model, so they are left out. Attention scores (~4 x layers x seq x heads x head_dim
    per token) are left out too, as in the usual 6N convention (which would count backward as 2 forwards).
    """
    forward = 2 * nonembed_params * tokens + 2 * vocab * hidden * logits_positions
    return 2.0 * forward


def matmul_peak(dtype: str = "float32", size: int = 2048, reps: int = 5) -> dict:
    """torch.mm of two size x size matrices, `reps` times after one warm-up: GFLOP/s by wall and by CPU second.

    The best repetition is the peak (other jobs on the cores only slow a repetition down); CPU seconds count every
    thread of this process, so GFLOP/CPU-s is a per-core figure comparable with tokens per CPU second.
    """
    import time

    import torch

    a = torch.randn(size, size).to(getattr(torch, dtype))
    b = torch.randn(size, size).to(getattr(torch, dtype))
    torch.mm(a, b)
    walls, cpus = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        torch.mm(a, b)
        walls.append(time.perf_counter() - t)
        cpus.append(max(time.process_time() - c, 1e-9))
    flop = 2 * size**3
    return {
        "dtype": dtype,
        "size": size,
        "reps": reps,
        "threads": torch.get_num_threads(),
        "gflops_per_s": round(flop / min(walls) / 1e9, 2),
        "gflops_per_cpu_s": round(flop / min(cpus) / 1e9, 2),
        "mean_gflops_per_cpu_s": round(flop * reps / sum(cpus) / 1e9, 2),
    }


# ---------------------------------------------------------------- tables


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[tuple[str, str, int]]) -> str:
    """A markdown table of `rows`: columns are (key, header, digits); missing values print as '-'."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"
    body = ["| " + " | ".join(fmt(r.get(k), d) for k, _, d in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])
