"""Where llama.cpp is and what of it is built, and its server: `llama-server` for one GGUF on 127.0.0.1, started and
always stopped. The tree is the one scripts/setup.sh unpacks (or UNSLOTH_SFT_LLAMA_CPP); export.runtime builds it."""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from unsloth_sft.core import procs
from unsloth_sft.core.errors import RunError
from unsloth_sft.core.files import read_json
from unsloth_sft.core.paths import cache_root
from unsloth_sft.core.quiet import is_verbose

LLAMA_CPP_ENV = "UNSLOTH_SFT_LLAMA_CPP"  # a llama.cpp source tree with convert_hf_to_gguf.py (and gguf-py)
SERVER, QUANTIZE = "llama-server", "llama-quantize"
TARGETS = (SERVER, QUANTIZE)
BUILT_MARK = "unsloth_sft-built.json"  # in TREE/build, written last: the build finished
BUILD_ENV = "UNSLOTH_SFT_BUILD_LLAMA"  # 1: scripts/setup.sh builds the runtime (else it is built on first use)
BUILD_MINUTES = "~10-15 min on 2 cores"
HOW_TO_BUILD = (
    f"build it once ({BUILD_MINUTES}): `.venv/bin/python -m unsloth_sft.export.runtime` "
    f"(or `{BUILD_ENV}=1 bash scripts/setup.sh`)"
)
READY_S = 120.0  # a server that is not answering /health after this long is reported with its log's last line


def llama_cpp_candidates() -> list[Path]:
    if os.environ.get(LLAMA_CPP_ENV):
        return [Path(os.environ[LLAMA_CPP_ENV]).expanduser()]
    places = [cache_root() / "tools" / "llama.cpp", Path.home() / ".cache" / "unsloth_sft" / "tools" / "llama.cpp"]
    return list(dict.fromkeys(places))


def build_dir(root: Path) -> Path:
    return root / "build"


def built(root: Path) -> dict | None:
    """The finished build's record (targets, seconds, date) when every target is there, else None."""
    mark = read_json(build_dir(root) / BUILT_MARK)
    if not mark or any(not (build_dir(root) / "bin" / t).is_file() for t in TARGETS):
        return None
    return mark


def server_binary() -> Path | None:
    """llama-server from the finished build of the llama.cpp tree, or None (never a half-built one)."""
    for root in llama_cpp_candidates():
        if (root / "convert_hf_to_gguf.py").is_file():
            return build_dir(root) / "bin" / SERVER if built(root) else None
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """llama-server for one GGUF on 127.0.0.1 (a free port unless given): started by `with` (or `start`), always
    stopped and reaped by its end (or `stop`); tied to this process, so it dies with it even on SIGKILL."""

    def __init__(self, gguf: Path, binary: Path, args: list[str] | None = None, port: int | None = None, ctx=4096):
        self.gguf, self.binary, self.args, self.ctx = Path(gguf), Path(binary), list(args or []), ctx
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.log: collections.deque[str] = collections.deque(maxlen=50)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        threads = str(max(1, os.cpu_count() or 1))
        return [
            str(self.binary), "-m", str(self.gguf), "--host", "127.0.0.1", "--port", str(self.port),
            "-c", str(self.ctx), "-t", threads, "-np", "1", "--no-webui", "--no-warmup", "-cram", "0", *self.args,
        ]  # fmt: skip

    def _drain(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip()
            self.log.append(line)
            if is_verbose():
                print(line, flush=True)

    def start(self, ready_s: float = READY_S) -> LlamaServer:
        tries = 1 if self.port else 3  # a free port taken between our look and the server's bind: another one
        for attempt in range(tries):
            self.port = self.port if tries == 1 else free_port()
            self.proc = subprocess.Popen(procs.tied(self.command()), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True).start()
            try:
                self._wait_ready(ready_s)
                return self
            except RunError:
                self.stop()
                bind_failed = any("bind" in line.lower() for line in self.log)
                if attempt == tries - 1 or not bind_failed:
                    raise
        return self

    def _wait_ready(self, ready_s: float) -> None:
        deadline = time.monotonic() + ready_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RunError(f"llama-server stopped at start (exit {self.proc.returncode}): {self.last_line()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RunError(f"llama-server did not answer within {ready_s:.0f} s on {self.url}: {self.last_line()}")

    def last_line(self) -> str:
        time.sleep(0.1)  # the reader thread's last lines
        errors = [line for line in self.log if "error" in line.lower() or "failed" in line.lower()]
        return ((errors or list(self.log) or ["no output"])[-1]).strip()[:300]

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s`; reaped either way (no zombie, nothing left on the port)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def post(self, path: str, body: dict, timeout: float = 600.0) -> dict:
        request = urllib.request.Request(
            self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as err:
            raise RunError(
                f"llama-server {path}: HTTP {err.code}: {err.read()[:300].decode(errors='replace')}"
            ) from None
        except (urllib.error.URLError, OSError) as err:
            raise RunError(f"llama-server {path}: {err}; its log: {self.last_line()}") from None

    def complete(self, ids: list[int], n_predict: int, sampling: dict | None = None, cache: bool = False) -> dict:
        """/completion on token ids (no BOS added: the ids carry the prompt's own), greedy unless `sampling`."""
        body = {
            "prompt": ids,
            "n_predict": n_predict,
            "temperature": 0.0,
            "top_k": 1,
            "repeat_penalty": 1.0,
            "return_tokens": True,
            "cache_prompt": cache,
            **(sampling or {}),
        }
        return self.post("/completion", body)

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's own tokenizer on `text`, special tokens parsed, nothing added (as the run tokenizes prompts)."""
        return self.post("/tokenize", {"content": text, "add_special": False, "parse_special": True})["tokens"]
