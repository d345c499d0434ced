"""`unsloth-sft serve RUN`: llama.cpp's OpenAI-compatible llama-server on 127.0.0.1 for the run's GGUF, with the
run's chat template and eval's generation settings as its defaults; Ctrl-C (or SIGTERM) stops it, nothing is left."""

from __future__ import annotations

import json
from pathlib import Path

from unsloth_sft.core.errors import ConfigError, RunError
from unsloth_sft.runs.folder import RunDir

# which of the run's GGUFs to serve when --gguf is not given: the closest to merged/ that is not float32-sized
PREFERENCE = ("q8_0", "f16", "bf16", "q6_k", "q5_k_m", "q5_k_s", "q4_k_m", "q4_k_s", "q4_0", "q3_k_m", "q2_k", "f32")


def pick_gguf(run: RunDir, given: str | None) -> Path:
    if given is not None:
        path = Path(given) if Path(given).is_file() else run.gguf_dir / given
        if not path.is_file() or path.suffix != ".gguf":
            raise ConfigError(f"--gguf {given}: no such .gguf file (here or in {run.gguf_dir})")
        return path
    found = sorted(run.gguf_dir.glob("*.gguf"))
    if not found:
        raise RunError(f"{run} has no GGUF to serve; export one first: `unsloth-sft export {run} --method gguf`")
    rank = {q: i for i, q in enumerate(PREFERENCE)}
    return min(found, key=lambda p: (rank.get(p.stem.rsplit("-", 1)[-1], len(rank)), p.name))


def plain_template(template: str, bos: str) -> str:
    """A Jinja chat template rendering what data.prompts renders for a qa/alpaca/plain run (the last user message)."""
    from unsloth_sft.data.prompts import ALPACA, QA

    user = "{{ messages[-1]['content'] }}"
    body = {"qa": QA.format(question=user), "alpaca": ALPACA.format(instruction=user), "plain": user}[template]
    return ("{{ bos_token }}" if bos else "") + body


def template_args(run: RunDir, tokenizer, template: str) -> list[str]:
    """llama-server's chat-template flags for the run: the chat template it trained with (the saved file when there
    is one), or the qa/alpaca/plain prompt as a Jinja template. llama.cpp drops the rendered BOS when it adds one."""
    from unsloth_sft.models.tokens import bos_text

    if template == "chat":
        for folder in (run.merged, run.adapter):
            if (folder / "chat_template.jinja").is_file():
                return ["--jinja", "--chat-template-file", str(folder / "chat_template.jinja")]
        return ["--jinja", "--chat-template", tokenizer.chat_template]
    return ["--jinja", "--chat-template", plain_template(template, bos_text(tokenizer))]


def sampling_args(ecfg) -> list[str]:
    """eval's generation settings as the server's defaults (a request's own fields override them)."""
    args = ["-n", str(ecfg.max_new_tokens), "--repeat-penalty", str(ecfg.repetition_penalty)]
    if ecfg.do_sample:
        return args + ["--temp", str(ecfg.temperature), "--top-k", str(ecfg.top_k), "--top-p", str(ecfg.top_p)]
    return args + ["--temp", "0", "--top-k", "1"]


def run_template(run: RunDir, cfg, tokenizer) -> str:
    from unsloth_sft.data.prompts import choose_template

    task = run.task or cfg.data.task
    return "plain" if task == "text" else choose_template(task, cfg.data, tokenizer)


def example_curl(url: str) -> str:
    body = {"messages": [{"role": "user", "content": "Hello!"}], "temperature": 0}
    return f"curl {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{json.dumps(body)}'"


def serve(run_dir: str, gguf: str | None = None, port: int = 8080) -> None:
    """Start llama-server for the run and wait until Ctrl-C or SIGTERM; the server is stopped and reaped either way."""
    from transformers import AutoTokenizer

    from unsloth_sft.export.llama_cpp import LlamaServer
    from unsloth_sft.export.runtime import ensure_server

    run = RunDir(run_dir)
    if not run.config_file.is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml): give runs/NAME")
    path = pick_gguf(run, gguf)  # before anything loads: no GGUF says so in a second
    cfg = run.config()
    tokenizer = AutoTokenizer.from_pretrained(run.merged if run.has_merged else run.adapter)
    template = run_template(run, cfg, tokenizer)
    binary = ensure_server(build=True)
    args = template_args(run, tokenizer, template) + sampling_args(cfg.eval)
    server = LlamaServer(path, binary, args, port=port, ctx=cfg.model.max_seq_length + cfg.eval.max_new_tokens)
    print(f"serve: starting llama-server for {path} ({template} template) on 127.0.0.1:{port}", flush=True)
    try:
        try:
            server.start()
        except RunError as err:
            if "bind" in str(err).lower():
                raise RunError(f"{err} (port {port} is taken: choose another with --port)") from None
            raise
        print(f"serve: {server.url}/v1 (OpenAI-compatible; llama-server pid {server.proc.pid}); Ctrl-C stops it")
        print(f"serve: try  {example_curl(server.url)}", flush=True)
        code = server.proc.wait()
        raise RunError(f"llama-server stopped by itself (exit {code}): {server.last_line()}")
    except KeyboardInterrupt:
        print("serve: stopping llama-server", flush=True)
    finally:
        server.stop()
    print("serve: stopped", flush=True)
