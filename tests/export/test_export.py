"""Export: merged and sharded weights, model cards, unsloth-only methods, and a Hub push to a local stand-in."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.conftest import ROOT, small_config

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "unsloth_sft"]
SECRET = "hf_TESTsecretTOKEN0123456789"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from unsloth_sft import pipeline

    cfg = small_config(tmp_path_factory.mktemp("export"), "model.backend=transformers", "export.save_methods=[lora]")
    pipeline.run_training(cfg)
    return cfg.run_dir


class HubStandIn(BaseHTTPRequestHandler):
    """The three Hub endpoints huggingface_hub's create_repo + upload_folder call, recorded, on loopback."""

    calls: list = []

    def _send(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.calls.append((self.path, self.headers.get("Authorization"), data))
        base = f"http://127.0.0.1:{self.server.server_port}"
        if self.path == "/api/repos/create":
            return self._send({"url": f"{base}/me/tiny", "name": "me/tiny"})
        if "/preupload/" in self.path:
            files = json.loads(data)["files"]
            return self._send(
                {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )
        return self._send({"commitUrl": f"{base}/me/tiny/commit/{'a' * 40}", "commitOid": "a" * 40})

    def log_message(self, *args):
        pass


def test_export_merged_and_push_to_stand_in(run_dir, tmp_path):
    """`unsloth-sft export --method merged_16bit --push-to-hub`: the merged folder and its card are uploaded
    with the HF_TOKEN from the environment, and the token appears in no output, config, card or file."""
    HubStandIn.calls = []
    server = HTTPServer(("127.0.0.1", 0), HubStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        **os.environ,
        "HF_TOKEN": SECRET,
        "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
        "HF_HUB_OFFLINE": "0",
    }
    done = subprocess.run(
        [*CLI, "export", str(run_dir), "--method", "merged_16bit", "--push-to-hub", "me/tiny", "--private"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    server.shutdown()
    assert done.returncode == 0, done.stderr[-2000:]
    assert SECRET not in done.stdout + done.stderr
    paths = [c[0] for c in HubStandIn.calls]
    assert paths[0] == "/api/repos/create" and "private" in HubStandIn.calls[0][2].decode()
    assert any("/commit/main" in p for p in paths)
    assert all(auth == f"Bearer {SECRET}" for _, auth, _ in HubStandIn.calls)
    commit = next(c[2].decode() for c in HubStandIn.calls if "/commit/" in c[0])
    uploaded = {
        json.loads(line)["value"]["path"]: json.loads(line)["value"]
        for line in commit.splitlines()
        if json.loads(line)["key"] == "file"
    }
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= set(uploaded)
    card = base64.b64decode(uploaded["README.md"]["content"]).decode()
    assert "library_name: transformers" in card and "- sft" in card and SECRET not in card
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_token_in_params_or_flag_is_refused(run_dir, tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text(f"export:\n  hub_token: {SECRET}\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    for args in (
        ["train", str(params)],
        ["train", str(ROOT / "params/demo-cpu.yaml"), "--set", f"hf_token={SECRET}"],
        ["export", str(run_dir), "--token", SECRET],
    ):
        done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, args
        assert "HF_TOKEN" in done.stderr and SECRET not in done.stderr + done.stdout
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_merged_4bit_forced_says_exactly_why_not(run_dir):
    """unsloth writes 4-bit merged weights only from the live model on a GPU: a saved run gets one line saying so."""
    done = subprocess.run(
        [*CLI, "export", str(run_dir), "--method", "merged_4bit_forced"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "needs the unsloth backend on a CUDA GPU" in done.stderr and "merged_16bit" in done.stderr
    assert "q4_k_m" in done.stderr


def test_sharded_merge_reloads(run_dir, tmp_path):
    """Above max_shard_size the merged weights are sharded with an index, and still reload."""
    from transformers import AutoModelForCausalLM

    from unsloth_sft.export.weights import merge_adapter
    from unsloth_sft.models.sources import resolve_model_path

    out = merge_adapter(
        resolve_model_path("tiny-gemma2"), run_dir / "adapter", tmp_path / "sharded", max_shard_size="300KB"
    )
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (out / "model.safetensors.index.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_lora_card_metadata(run_dir):
    import yaml

    text = (run_dir / "adapter" / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["base_model"] == "tiny-gemma2" and meta["library_name"] == "peft"
    assert {"unsloth", "trl", "sft", "lora"} <= set(meta["tags"]) and meta["language"] == ["hi", "en"]
    assert "AutoPeftModelForCausalLM" in text and "## Training config" in text
    assert "https://github.com/)" not in text  # no link to a bare github.com
