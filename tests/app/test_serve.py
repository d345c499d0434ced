"""`unsloth-sft serve RUN`: llama.cpp's OpenAI-compatible server for the run's GGUF answers a chat request (plain
HTTP) as the run's merged model answers greedily, and Ctrl-C or SIGTERM stops it with nothing left running."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import small_config
from unsloth_sft.export import llama_cpp as runtime

BUILT = runtime.server_binary()
NOT_BUILT = f"llama.cpp's llama-server is not built; {runtime.HOW_TO_BUILD} (CI does it in set-up)"
CLI = [sys.executable, "-m", "unsloth_sft"]
MESSAGES = [{"role": "user", "content": "Summarize: Ravi missed the bus, so he walked to school in the rain."}]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The tiny Gemma-2 trained and exported to an f32 GGUF (llama.cpp then computes what transformers computes)."""
    from unsloth_sft import pipeline

    if BUILT is None:
        pytest.skip(NOT_BUILT)
    cfg = small_config(
        tmp_path_factory.mktemp("serve"),
        "model.backend=transformers",
        "train.max_steps=30",
        "export.save_methods=[lora, gguf]",
        "export.gguf_quant=[f32]",
        "export.check_prompts=1",
    )
    pipeline.run_training(cfg)
    return cfg.run_dir


def greedy_reply(run_dir: Path, max_new_tokens: int) -> str:
    """The run's own greedy reply: merged/ through transformers, the prompt rendered as training rendered it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unsloth_sft.data.prompts import render_prompt
    from unsloth_sft.export.check import greedy

    tok = AutoTokenizer.from_pretrained(run_dir / "merged")
    model = AutoModelForCausalLM.from_pretrained(run_dir / "merged", dtype=torch.float32).eval()
    ids = tok(render_prompt(tok, MESSAGES, "chat"), add_special_tokens=False).input_ids
    return tok.decode(greedy(model, tok, ids, max_new_tokens), skip_special_tokens=True).strip()


def start_serve(run_dir: Path, port: int) -> tuple[subprocess.Popen, queue.Queue, int]:
    proc = subprocess.Popen(
        [*CLI, "serve", str(run_dir), "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline, seen = time.monotonic() + 180, []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if m := re.search(r"llama-server pid (\d+)", line):
            return proc, lines, int(m[1])
    proc.kill()
    pytest.fail("serve did not start: " + "".join(seen))


def rest(lines: queue.Queue) -> str:
    time.sleep(0.2)
    out = []
    while not lines.empty():
        out.append(lines.get())
    return "".join(out)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_answers_as_the_run_does_and_stops_cleanly(run_dir, stop):
    port = runtime.free_port()
    proc, lines, pid = start_serve(run_dir, port)
    try:
        assert Path(f"/proc/{pid}").exists()
        body = {"messages": MESSAGES, "temperature": 0, "max_tokens": 16}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as r:
            reply = json.loads(r.read())["choices"][0]["message"]["content"]
        assert reply.strip() == greedy_reply(run_dir, 16)
    finally:
        proc.send_signal(stop)
        code = proc.wait(60)
    assert code == 0 and "serve: stopped" in rest(lines)
    assert not Path(f"/proc/{pid}").exists()  # llama-server is gone, not orphaned


def test_serve_without_a_gguf_says_how_to_make_one(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("run_name: r\n")
    out = subprocess.run([*CLI, "serve", str(run)], capture_output=True, text=True)
    assert out.returncode == 2 and "has no GGUF to serve" in out.stderr and "--method gguf" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_serve_picks_q8_0_then_f16_and_checks_the_given_file(tmp_path):
    from unsloth_sft.app.serve import pick_gguf, plain_template
    from unsloth_sft.core.errors import ConfigError
    from unsloth_sft.runs.folder import RunDir

    run = RunDir(tmp_path)
    (tmp_path / "gguf").mkdir()
    for quant in ("f32", "q4_k_m", "f16"):
        (tmp_path / "gguf" / f"t-{quant}.gguf").write_text("")
    assert pick_gguf(run, None).name == "t-f16.gguf"
    (tmp_path / "gguf" / "t-q8_0.gguf").write_text("")
    assert pick_gguf(run, None).name == "t-q8_0.gguf" and pick_gguf(run, "t-f32.gguf").name == "t-f32.gguf"
    with pytest.raises(ConfigError):
        pick_gguf(run, "nope.gguf")
    assert plain_template("qa", "<bos>") == "{{ bos_token }}Question: {{ messages[-1]['content'] }}\nAnswer:"
    assert plain_template("plain", "") == "{{ messages[-1]['content'] }}"
