"""Ollama Modelfiles for exported GGUFs: the training template in Go syntax, a stop per end-of-turn token, eval's sampling."""

from __future__ import annotations

import os
from pathlib import Path

END_OF_TURN = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>")  # texts llama.cpp takes as end of turn
GEMMA_TEMPLATE = (  # Go template; the system text joins the first user turn as data.prompts._merge_system folds it
    '{{- $system := "" }}{{- range $i, $m := .Messages }}'
    '{{- if eq $m.Role "system" }}{{ $system = $m.Content }}'
    '{{- else if eq $m.Role "user" }}<start_of_turn>user\n'
    "{{ if $system }}{{ $system }}\n\n{{ end }}{{ $m.Content }}<end_of_turn>\n"
    '{{ $system = "" }}'
    '{{- else if eq $m.Role "assistant" }}<start_of_turn>model\n{{ $m.Content }}<end_of_turn>\n'
    "{{ end }}{{- end }}<start_of_turn>model\n"
)
CHATML_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)


def ollama_template(tokenizer, template: str) -> str | None:
    """A Go TEMPLATE rendering what prompts.render_prompt renders (BOS left to llama.cpp's add_bos)."""
    from unsloth_sft.data.prompts import ALPACA, QA

    if template == "chat":
        chat = tokenizer.chat_template or ""
        if "<start_of_turn>" in chat:
            return GEMMA_TEMPLATE
        if "<|im_start|>" in chat:
            return CHATML_TEMPLATE
        return None  # another chat format: Ollama falls back to the GGUF's own chat template
    body = {
        "qa": QA.format(question="{{ .Prompt }}"),
        "alpaca": ALPACA.format(instruction="{{ .Prompt }}"),
        "plain": "{{ .Prompt }}",
    }.get(template)
    return body


def default_system(tokenizer) -> str | None:
    """The system text a ChatML template inserts when a conversation has none (SmolLM2's "You are a helpful...")."""
    import re

    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    found = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n", rendered, re.S)
    return found.group(1) if found else None


def from_line(path: str) -> str:
    """A file in the Modelfile's folder as ./NAME (Ollama resolves it there), any other path as it is."""
    return path if os.sep in path else f"./{path}"


def modelfile(gguf_name: str, tokenizer, template: str, ecfg, base: str | None = None) -> str:
    """An Ollama Modelfile: FROM the GGUF (or, for a LoRA adapter GGUF, FROM `base` and ADAPTER the adapter), the
    training template, a stop per end-of-turn token, eval's sampling."""
    from unsloth_sft.models.tokens import stop_token_ids

    lines = [
        f"# ollama create NAME -f {Path(gguf_name).with_suffix('.Modelfile').name} && ollama run NAME",
        f"FROM {from_line(base)}" if base else f"FROM ./{gguf_name}",
    ]
    if base:
        lines.append(f"ADAPTER ./{gguf_name}")
    body = ollama_template(tokenizer, template)
    if body is not None and "tools" in (tokenizer.chat_template or "") and template == "chat":
        lines.append(  # Ollama's Go template cannot reproduce the Jinja one's JSON spacing and key order
            "# TEMPLATE renders the chat turns only, not tools or tool calls: for those, serve the GGUF with "
            "llama.cpp (llama-server --jinja uses the chat template stored in the file)"
        )
    if body is not None:
        lines.append(f'TEMPLATE """{body}"""')
    system = default_system(tokenizer) if body == CHATML_TEMPLATE else None
    if system:  # Ollama adds it when a request has no system message, as the chat template does
        lines.append(f'SYSTEM """{system}"""')
    stops = [tokenizer.convert_ids_to_tokens(i) for i in stop_token_ids(tokenizer)]
    stops = [s for s in stops if s in END_OF_TURN or s in ("<start_of_turn>", "<|im_start|>")] or [tokenizer.eos_token]
    lines += [f'PARAMETER stop "{s}"' for s in dict.fromkeys(stops)]
    lines.append(f"PARAMETER temperature {ecfg.temperature if ecfg.do_sample else 0}")
    if ecfg.do_sample:
        lines += [f"PARAMETER top_k {ecfg.top_k}", f"PARAMETER top_p {ecfg.top_p}"]
    lines += [f"PARAMETER repeat_penalty {ecfg.repetition_penalty}", f"PARAMETER num_predict {ecfg.max_new_tokens}"]
    return "\n".join(lines) + "\n"
