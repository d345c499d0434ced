"""Loading a RunConfig: YAML file -> papermill parameters -> dotted overrides (`--set`), one-line errors; saving it."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from unsloth_sft.config.data import DataConfig, SourceConfig
from unsloth_sft.config.run import SECTIONS, RunConfig, validate
from unsloth_sft.core.errors import ConfigError
from unsloth_sft.core.files import atomic_write_text

# Keys that look like secrets: refused in params files, -p and --set (issue: token from the environment only).
SECRET_KEYS = ("token", "hf_token", "hub_token", "api_key", "wandb_api_key")


def did_you_mean(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(valid)}"


def check_secret(key: str, where: str) -> None:
    """Refuse a key that looks like a secret (the value is never echoed): tokens come from the environment."""
    if key.lower() in SECRET_KEYS or key.lower().endswith("_token"):
        raise ConfigError(
            f"{where}: a token does not belong in params; remove it and set the HF_TOKEN environment "
            "variable (or run `huggingface-cli login`) instead"
        )


_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
}
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _expected(error: dict) -> str:
    """What a pydantic type error says the value should have been, in the words of this package's messages."""
    expected = (error.get("ctx") or {}).get("expected", "")
    if error["type"] == "literal_error":  # expected: "'a', 'b' or 'c'", or "'a'" alone
        return f"one of {expected}" if " or " in expected else expected
    return _EXPECTED.get(error["type"], error["msg"][:1].lower() + error["msg"][1:])


def _dotted(loc: tuple, raw: dict, where: str) -> str:
    """The dotted key of an error location, e.g. lora.target_modules[1]; a union member's tag is not a key."""
    path, node = f"{where}.{loc[0]}" if where else str(loc[0]), raw.get(loc[0])
    for part in loc[1:]:
        if isinstance(node, list) and isinstance(part, int) and part < len(node):
            path, node = f"{path}[{part}]", node[part]
        elif isinstance(node, dict) and part in node:
            path, node = f"{path}.{part}", node[part]
        else:
            break  # e.g. 'bool' or "literal['unsloth']": which member of `bool | Literal["unsloth"]` refused it
    return path


def one_line_error(err: ValidationError, cls: type, raw: dict, where: str) -> ConfigError:
    """The first pydantic error as one line: the dotted key, the bound or every type it accepts, the value it got."""
    errors = err.errors()
    first = errors[0]
    key = _dotted(first["loc"], raw, where)
    hint = typing.get_type_hints(cls).get(first["loc"][0])
    null = " or null" if len(first["loc"]) == 1 and type(None) in typing.get_args(hint) else ""
    if first["type"] in _BOUNDS:  # e.g. train.max_steps must be >= 1 or null, got 0
        bound = next(iter(first["ctx"].values()))
        return ConfigError(f"{key} must be {_BOUNDS[first['type']]} {bound}{null}, got {first['input']}")
    choices = []
    for error in errors:
        if _dotted(error["loc"], raw, where) == key and _expected(error) not in choices:
            choices.append(_expected(error))
    return ConfigError(f"{key}: expected {' or '.join(choices)}{null}, got {first['input']!r}")


def _build(cls: type, raw: Any, where: str = "") -> Any:
    """A section (or the RunConfig with its sections) from a plain mapping; the first problem as a ConfigError."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'params'}: expected a mapping of keys, got {type(raw).__name__} {raw!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{where}.{key}" if where else str(key)
        check_secret(str(key), dotted)
        if key not in names:
            raise ConfigError(f"unknown key '{dotted}'{did_you_mean(str(key), names)}")
        if cls is DataConfig and key == "sources" and isinstance(value, list):
            kwargs[key] = [_build(SourceConfig, item, f"{dotted}[{i}]") for i, item in enumerate(value)]
        elif cls is not RunConfig or key not in SECTIONS:
            kwargs[key] = value
        elif key == "lora" and value is None:  # `lora: null` means full fine-tuning
            kwargs["finetune"] = "full"
        else:
            kwargs[key] = _build(SECTIONS[key], value, dotted)
    try:
        return cls(**kwargs)
    except ValidationError as err:
        raise one_line_error(err, cls, kwargs, where) from None


def _parse_scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list | dict[str, Any]) -> dict[str, Any]:
    """Apply dotted overrides (`train.max_steps=5` or {"train.max_steps": 5}) to a raw mapping."""
    items = overrides.items() if isinstance(overrides, dict) else []
    if not isinstance(overrides, dict):
        parsed = []
        for item in overrides:
            if isinstance(item, tuple):  # (dotted key, value) from code: no YAML parsing of the value
                parsed.append(item)
                continue
            if "=" not in item:
                raise ConfigError(f"override '{item}': expected KEY=VALUE, e.g. train.max_steps=5")
            key, _, text = item.partition("=")
            parsed.append((key.strip(), _parse_scalar(text)))
        items = parsed
    for key, value in items:
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{key}': '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def unique_key_loader():
    """PyYAML's safe loader, refusing a key given twice in one mapping (YAML itself keeps the last one silently)."""
    import yaml
    from yaml.constructor import ConstructorError

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                self.flatten_mapping(node)
                seen: dict = {}
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=True)
                    if key in seen:
                        raise ConstructorError(
                            None,
                            None,
                            f"duplicate key '{key}' (also on line {seen[key] + 1}); keep one of them",
                            key_node.start_mark,
                        )
                    seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a params file into a mapping, naming the file and line on any error (a duplicate key is one)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=unique_key_loader())  # a SafeLoader: plain data only
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "not valid YAML"
        fix = "" if "duplicate key" in problem else "; fix the YAML syntax"
        raise ConfigError(f"{path}:{line}: {problem}{fix}") from None
    if raw is None:
        raise ConfigError(
            f"{path}: the params file is empty (only comments or blank lines); a recipe says what to train: "
            "start from one in params/ (e.g. params/demo-cpu.yaml)"
        )
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections (model:, data:, train: ...), got a {type(raw).__name__}"
        )
    if not raw:
        raise ConfigError(
            f"{path}: the params file is an empty mapping ({{}}); a recipe says what to train: start from one in "
            "params/ (e.g. params/demo-cpu.yaml)"
        )
    return raw


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> RunConfig:
    """Load a RunConfig from a YAML file, then a mapping (papermill parameters), then dotted overrides."""
    raw: dict[str, Any] = read_yaml(path) if path else {}
    raw.pop("sweep", None)  # a params file's sweep section is for `unsloth-sft sweep` (sweep.SweepConfig), not a run
    if path and not raw:  # every variant of a sweep, and any single run, would train the defaults into runs/demo
        raise ConfigError(
            f"{path}: the params file holds only a sweep: section, no recipe; put the run's keys beside it (model:, "
            "data:, train: ...), e.g. start from params/demo-cpu.yaml"
        )
    where = str(path) if path else "params"
    for key, value in copy.deepcopy(params or {}).items():  # a copy: the caller's mapping stays as it was
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    raw = apply_overrides(raw, overrides or [])
    data = raw.get("data")
    if isinstance(data, dict) and data.get("sources") is not None and "source" in data:
        raise ConfigError(
            f"{where}: data.source and data.sources are exclusive; drop data.source (each entry of data.sources "
            "names its own source)"
        )
    try:
        cfg = _build(RunConfig, raw)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    validate(cfg, where)
    return cfg


def save_config(cfg: RunConfig, path: str | Path, header: str = "") -> None:
    """Write the resolved config as YAML (atomically), after `header` comment lines (no secrets: loading refuses them)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def represent_str(dumper, value):
        # NEL and the Unicode line/paragraph separators read back as line breaks unless escaped in double quotes
        style = '"' if any(ch in value for ch in "\x85\u2028\u2029") else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, represent_str)
    text = yaml.dump(cfg.to_dict(), Dumper=Dumper, sort_keys=False, allow_unicode=True)
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    atomic_write_text(path, comments + text)
