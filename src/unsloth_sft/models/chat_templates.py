"""An offline tiny Gemma-2: random weights, a tokenizer trained on the package's samples, Gemma's chat template."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from unsloth_sft.core.errors import ConfigError, ModelError
from unsloth_sft.models.tokens import token_id

# Gemma-2's official template: no system role, "model" for the assistant, content trimmed.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)


# A special marker written literally in a template: <start_of_turn>, <|im_end|>, <|eot_id|> ...
MARKER = re.compile(r"<\|?[A-Za-z_][A-Za-z0-9_]*\|?>")
# Hermes' tool-call tags: text a model learns to write (SmolLM2 has no tokens for them), not turn markers
TOOL_TAGS = ("<tools>", "<tool_call>", "<tool_response>")
OWN_TEMPLATES = Path(__file__).parent / "templates"  # named templates shipped here (chatml-tools)


def trl_templates() -> dict[str, Path]:
    """TRL's bundled chat templates by name (its *_training variants are for assistant-only loss, left out)."""
    spec = importlib.util.find_spec("trl")
    folder = Path(next(iter(spec.submodule_search_locations))) / "chat_templates" if spec else None
    if folder is None or not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.jinja")) if not p.stem.endswith("_training")}


def unsloth_templates(backend: str) -> dict[str, str]:
    """unsloth's catalogue of templates (imported only on the unsloth backend: importing it patches transformers)."""
    if backend != "unsloth":
        return {}
    from unsloth.chat_templates import CHAT_TEMPLATES, _change_system_message

    # unsloth's own filling of a template's {system_message} slot with its default (alpaca's instruction line)
    return {
        name: _change_system_message(entry[0], name)[0]
        for name, entry in CHAT_TEMPLATES.items()
        if isinstance(entry[0], str)
    }


def template_text(spec: str, backend: str) -> str:
    """The Jinja text of model.chat_template: a .jinja file, a TRL template name, or an unsloth one."""
    if spec.endswith((".jinja", ".j2")) or "/" in spec:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.chat_template '{spec}': no such Jinja file")
        return path.read_text(encoding="utf-8")
    if (OWN_TEMPLATES / f"{spec}.jinja").is_file():
        return (OWN_TEMPLATES / f"{spec}.jinja").read_text(encoding="utf-8")
    trl = trl_templates()
    if spec in trl:
        return trl[spec].read_text(encoding="utf-8")
    ours = unsloth_templates(backend)
    if spec in ours:
        return ours[spec]
    names = (
        sorted(p.stem for p in OWN_TEMPLATES.glob("*.jinja")) + sorted(trl) + [n for n in sorted(ours) if n not in trl]
    )
    more = "" if ours else "; unsloth's (chatml, alpaca, mistral ...) on the unsloth backend"
    raise ConfigError(f"model.chat_template '{spec}': not a .jinja file or a known name ({', '.join(names)}{more})")


def check_markers(tokenizer, text: str, spec: str) -> None:
    """Refuse a template whose turn markers this tokenizer does not know as tokens: they would be split into
    pieces, and generation would not stop at the end of a turn (a training/serving mismatch)."""
    missing = sorted({m for m in MARKER.findall(text) if token_id(tokenizer, m) is None and m not in TOOL_TAGS})
    if missing:
        raise ModelError(
            f"model.chat_template {spec} writes {', '.join(missing)}, which this tokenizer has no token for; "
            "choose the template of this model's family (e.g. gemma for Gemma) or a Jinja file in its tokens"
        )


def set_chat_template(tokenizer, spec: str | None, backend: str) -> None:
    """Put model.chat_template on the tokenizer (None: keep the tokenizer's own)."""
    if spec is None:
        return
    text = template_text(spec, backend)
    check_markers(tokenizer, text, spec)
    tokenizer.chat_template = text
