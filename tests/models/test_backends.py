"""The known unsloth workarounds: set before `import unsloth` only on the torch releases that need them, never over
the user's own setting; and the hint a known compile crash gets."""

from __future__ import annotations

import sys

import pytest

from unsloth_sft.models import backends
from unsloth_sft.models.backends import compile_crash_hint, unsloth_settings, unsloth_workarounds

NF4 = {"UNSLOTH_BNB_NF4_LINEAR": "0"}


@pytest.mark.parametrize(
    "version, cuda, expected",
    [
        ("2.10.0+cu128", True, {}),
        ("2.10.0+cpu", False, {}),
        ("2.11.0+cu130", True, NF4),
        ("2.11.1", True, NF4),
        ("2.11.0+cpu", False, {}),  # the crash is in the CUDA path: a CPU run keeps unsloth's defaults
        ("2.12.0+cu130", True, {}),  # has the fix (pytorch PR #183334); newer ones are unverified: left alone
        ("2.12.0.dev20260301+cu130", True, {}),
        ("2.12.0", False, {}),
        ("not a version", True, {}),
    ],
)
def test_the_version_rule(version, cuda, expected):
    assert unsloth_workarounds(version, cuda, {}) == expected


@pytest.mark.parametrize("value", ["1", "0", "auto", ""])
def test_a_users_own_setting_wins(value):
    assert unsloth_workarounds("2.11.0+cu130", True, {"UNSLOTH_BNB_NF4_LINEAR": value}) == {}


@pytest.mark.parametrize("var, value", [("UNSLOTH_BLOCK_COMPILE", "0"), ("UNSLOTH_COMPILE_DISABLE", "1")])
def test_a_user_who_turned_the_block_compile_off_needs_nothing_more(var, value):
    assert unsloth_workarounds("2.11.0+cu130", True, {var: value}) == {}
    assert unsloth_workarounds("2.11.0+cu130", True, {var: "1" if value == "0" else "0"}) == NF4


@pytest.fixture
def fresh(monkeypatch):
    """A process where unsloth is not imported yet and nothing was applied; torch 2.11 with a CUDA GPU."""
    import torch

    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    monkeypatch.setattr(backends, "_APPLIED", {})
    monkeypatch.setattr(torch, "__version__", "2.11.0+cu130")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)


def test_applied_once_with_one_line_and_recorded(fresh, capsys):
    environ: dict[str, str] = {"PATH": "/bin"}
    assert backends.apply_unsloth_workarounds(environ) == NF4
    assert environ["UNSLOTH_BNB_NF4_LINEAR"] == "0"
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "unsloth: UNSLOTH_BNB_NF4_LINEAR=0 (torch 2.11 + CUDA: Inductor crashes compiling unsloth's traced NF4 "
        "kernel, pytorch#181735); set it yourself to override"
    ]
    assert backends.apply_unsloth_workarounds(environ) == {}  # a second backend check: already there, no line
    assert capsys.readouterr().out == ""
    recorded = unsloth_settings(environ)
    assert recorded["UNSLOTH_BNB_NF4_LINEAR"]["set_by"] == "unsloth_sft" and "pytorch#181735" in str(recorded)


def test_the_users_setting_is_recorded_as_theirs(fresh, capsys):
    environ = {"UNSLOTH_BNB_NF4_LINEAR": "1", "UNSLOTH_BLOCK_COMPILE_DYNAMIC_BATCH": "0"}
    assert backends.apply_unsloth_workarounds(environ) == {} and capsys.readouterr().out == ""
    assert environ["UNSLOTH_BNB_NF4_LINEAR"] == "1"
    assert unsloth_settings(environ) == {
        "UNSLOTH_BNB_NF4_LINEAR": {"value": "1", "set_by": "user"},
        "UNSLOTH_BLOCK_COMPILE_DYNAMIC_BATCH": {"value": "0", "set_by": "user"},
    }


def test_too_late_once_unsloth_is_imported(fresh, monkeypatch):
    monkeypatch.setitem(sys.modules, "unsloth", object())
    environ: dict[str, str] = {}
    assert backends.apply_unsloth_workarounds(environ) == {} and environ == {}


CRASH = (
    "torch._inductor.exc.InductorError: AssertionError:\n"
    '  File ".../torch/_inductor/fx_passes/post_grad.py", in decompose_triton_kernel_wrapper_functional\n'
)


def test_a_known_compile_crash_names_the_next_switch():
    assert "set UNSLOTH_BNB_NF4_LINEAR=0" in compile_crash_hint(CRASH, {}, unsloth=False)
    assert "set UNSLOTH_BLOCK_COMPILE=0" in compile_crash_hint(CRASH, NF4, unsloth=True)  # the library set it already
    every = {"UNSLOTH_BNB_NF4_LINEAR": "0", "UNSLOTH_BLOCK_COMPILE": "0", "UNSLOTH_COMPILE_DISABLE": "1"}
    assert "model.backend: transformers" in compile_crash_hint(CRASH, every, unsloth=True)


def test_other_errors_get_no_compile_hint():
    inductor = "torch._inductor.exc.InductorError: LoweringException: something else"
    assert compile_crash_hint(inductor, {}, unsloth=False) is None  # not unsloth's switches to suggest
    assert "UNSLOTH_BNB_NF4_LINEAR=0" in compile_crash_hint(inductor, {}, unsloth=True)
    assert compile_crash_hint("RuntimeError: CUDA error: device-side assert triggered", {}, unsloth=True) is None
