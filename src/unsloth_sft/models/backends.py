"""The backend a run uses (unsloth's FastLanguageModel, or transformers + peft), imported in the right order."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from unsloth_sft.core.errors import ModelError
from unsloth_sft.core.hardware import cpu_compute_dtype, describe, dtype_reason
from unsloth_sft.core.quiet import silence_known_noise, stderr_to_stdout


@dataclass(frozen=True)
class Workaround:
    """An environment setting unsloth reads at import, set for the torch releases known to need it."""

    var: str
    value: str
    torch: tuple[tuple[int, int], ...]  # (major, minor) releases it applies to; later ones are unverified: left alone
    cuda: bool  # only with a CUDA GPU
    why: str
    avoided_by: tuple[tuple[str, tuple[str, ...]], ...] = ()  # the user's own settings that avoid it already


# torch 2.11 + CUDA: unsloth (2026.10.9) traces its Triton NF4 dequantize inside each decoder block's compiled
# region on torch >= 2.11 (models/_block_compile.py `_nf4_in_blocks`), with the sequence (and batch) size dynamic;
# Inductor then crashes compiling the block's backward (AssertionError in decompose_triton_kernel_wrapper_functional,
# pytorch#181735, fixed by PR #183334 after 2.11). UNSLOTH_BNB_NF4_LINEAR=0 keeps the NF4 matmul bitsandbytes' own
# op, as unsloth does before 2.11, and keeps the block compile (norms, LoRA); it also turns off unsloth's NF4 forward
# outside blocks, which with bitsandbytes >= 0.50 is on only on sm100 / sm120. By unsloth's source the other
# switches cost more or likely do not help: UNSLOTH_BLOCK_COMPILE_DYNAMIC_BATCH=0 leaves the sequence dimension dynamic
# (`_mark_seq_dynamic`), UNSLOTH_BLOCK_COMPILE=0 / UNSLOTH_COMPILE_DISABLE=1 drop the block compile altogether.
# NOT verified on a GPU yet (issue 33): the crash was seen on an H200; this switch was not tried there.
WORKAROUNDS = (
    Workaround(
        "UNSLOTH_BNB_NF4_LINEAR",
        "0",
        torch=((2, 11),),
        cuda=True,
        why="torch 2.11 + CUDA: Inductor crashes compiling unsloth's traced NF4 kernel, pytorch#181735",
        avoided_by=(("UNSLOTH_BLOCK_COMPILE", ("0",)), ("UNSLOTH_COMPILE_DISABLE", ("1", "partial"))),
    ),
)
# What the compile crash looks like, and the switches that avoid it, cheapest first (`compile_crash_hint`).
COMPILE_CRASH = ("InductorError", "decompose_triton_kernel_wrapper_functional")
CRASH_SWITCHES = (("UNSLOTH_BNB_NF4_LINEAR", "0"), ("UNSLOTH_BLOCK_COMPILE", "0"), ("UNSLOTH_COMPILE_DISABLE", "1"))
_APPLIED: dict[str, str] = {}  # what this process set, for environment.json


def torch_release(version: str) -> tuple[int, int] | None:
    """(major, minor) of a torch version string ("2.11.0+cu130" -> (2, 11)), None when it is not one."""
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def unsloth_workarounds(torch_version: str, cuda: bool, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment settings to make before `import unsloth` on this torch: none where the user set them."""
    release = torch_release(torch_version)
    return {
        w.var: w.value
        for w in WORKAROUNDS
        if release in w.torch
        and (cuda or not w.cuda)
        and w.var not in environ  # a user's own setting wins, whatever its value
        and not any(environ.get(var) in values for var, values in w.avoided_by)
    }


def workaround_line(settings: Mapping[str, str]) -> str:
    """The one line a run prints on what it set and why."""
    why = {w.var: w.why for w in WORKAROUNDS}
    parts = "; ".join(f"{var}={value} ({why.get(var, 'a known workaround')})" for var, value in settings.items())
    return f"unsloth: {parts}; set it yourself to override"


def apply_unsloth_workarounds(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set this torch's known workarounds in the environment (once, before unsloth is imported); print one line."""
    environ = os.environ if environ is None else environ
    if "unsloth" in sys.modules:  # unsloth read its settings on import: too late to change them
        return {}
    import torch

    cuda = torch.cuda.is_available() and torch.version.hip is None  # ROCm never takes unsloth's NF4 Triton path
    settings = unsloth_workarounds(torch.__version__, cuda, environ)
    if settings:
        environ.update(settings)
        _APPLIED.update(settings)
        print(workaround_line(settings), flush=True)
    return settings


def unsloth_settings(environ: Mapping[str, str] | None = None) -> dict[str, dict[str, str]]:
    """The compile switches unsloth ran with, for environment.json: each set one's value, who set it (this library,
    as a known workaround, or the user) and why; {} when none is set."""
    environ = os.environ if environ is None else environ
    why = {w.var: w.why for w in WORKAROUNDS}
    names = [w.var for w in WORKAROUNDS] + [var for var, _ in CRASH_SWITCHES] + ["UNSLOTH_BLOCK_COMPILE_DYNAMIC_BATCH"]
    found = {}
    for var in dict.fromkeys(names):
        if var in _APPLIED:
            found[var] = {"value": _APPLIED[var], "set_by": "unsloth_sft", "why": why.get(var, "")}
        elif var in environ:
            found[var] = {"value": environ[var], "set_by": "user"}
    return found


def compile_crash_hint(text: str, environ: Mapping[str, str] | None = None, unsloth: bool | None = None) -> str | None:
    """For the known torch.compile crash (`text`: the error and its traceback), the next switch that avoids it, else
    None. An InductorError counts only with unsloth imported (`unsloth`; default: whether it is): its switches."""
    unsloth = "unsloth" in sys.modules if unsloth is None else unsloth
    if COMPILE_CRASH[1] not in text and not (unsloth and COMPILE_CRASH[0] in text):
        return None
    environ = os.environ if environ is None else environ
    for var, value in CRASH_SWITCHES:  # the cheapest one not set yet: the library sets the first on torch 2.11
        if environ.get(var) != value:
            return (
                f"a known torch.compile crash with unsloth, pytorch#181735; set {var}={value} in the environment "
                "before unsloth is imported to avoid it"
            )
    return "a torch.compile crash with every unsloth compile switch off; try model.backend: transformers"


def unsloth_available() -> bool:
    """True when unsloth can be imported here (on a GPU, or with unsloth 2026.10.9's CPU backend)."""
    if importlib.util.find_spec("unsloth") is None:
        return False
    apply_unsloth_workarounds()  # unsloth reads them on import
    try:
        import unsloth  # noqa: F401
    except Exception:  # old releases raise on a machine with no GPU
        return False
    return True


def choose_backend(requested: str) -> str:
    if requested == "transformers":
        return "transformers"
    if unsloth_available():
        return "unsloth"
    if requested == "unsloth":
        raise ModelError(
            "model.backend is unsloth but unsloth does not import here; pip install unsloth, or use backend: transformers"
        )
    return "transformers"


def dtype_name(name: str, flags: list[str] | None = None) -> str:
    """model.dtype as it will run: "auto" is bf16 on a GPU that has it (else fp16), and on a CPU bf16 where it has
    bf16 matmul units (AMX-BF16 or AVX512-BF16), else fp32; `flags` fakes the CPU's flags in tests."""
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return cpu_compute_dtype(flags)


def torch_dtype(name: str, flags: list[str] | None = None):
    import torch

    return getattr(torch, dtype_name(name, flags))


def unsloth_dtype(name: str, flags: list[str] | None = None):
    """The dtype to give unsloth's from_pretrained: None (its own rule) for auto on a GPU; on a CPU ours, so that
    both backends train in the same dtype on the same machine."""
    import torch

    return None if name == "auto" and torch.cuda.is_available() else torch_dtype(name, flags)


def dtype_line(name: str, flags: list[str] | None = None) -> str:
    """The one line a run prints at start: the compute dtype, why, the CPU and its ISA flags."""
    import torch

    chosen = dtype_name(name, flags)
    if torch.cuda.is_available():
        why = "model.dtype" if name != "auto" else f"auto on {torch.cuda.get_device_name(0)}"
    else:
        why = "model.dtype" if name != "auto" else f"auto: {dtype_reason(flags)}"
    return f"compute dtype {chosen} ({why}); {describe()}"


def import_backend(requested: str) -> str:
    """The backend a run will use; for unsloth, `import unsloth` now, before anything imports transformers,
    trl or peft (unsloth patches them on import, and warns when it comes second)."""
    silence_known_noise()
    with stderr_to_stdout():
        return choose_backend(requested)
