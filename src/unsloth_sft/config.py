"""One typed config for a run: YAML file -> papermill parameters / dotted overrides -> RunConfig."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from unsloth_sft.errors import ConfigError

TASKS = ("auto", "summarization", "gsm8k", "qa", "chat", "instruction", "completion", "text")
TEMPLATES = ("auto", "chat", "qa", "alpaca", "plain")
SAVE_METHODS = ("lora", "merged_16bit", "merged_4bit_forced", "gguf")
# Keys that look like secrets: refused in params files, -p and --set (issue: token from the environment only).
SECRET_KEYS = ("token", "hf_token", "hub_token", "api_key", "wandb_api_key")


@dataclass
class ModelConfig:
    name: str = "tiny-gemma2"  # Hub id, local folder, or "tiny-gemma2" (built offline, ~200k params)
    backend: Literal["auto", "unsloth", "transformers"] = "auto"  # auto = unsloth when it imports
    max_seq_length: int = 2048  # tokens; longer examples are truncated (see `unsloth-sft preview`)
    load_in_4bit: bool = True  # NF4 via bitsandbytes: ~4x less weight memory, QLoRA
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPUs that have it
    trust_remote_code: bool = False  # only for models whose code you have read


@dataclass
class LoraConfig:
    r: int = 16  # rank: 8-64 typical; more = more capacity and memory
    alpha: int = 16  # scaling = alpha / r (or / sqrt(r) with rslora)
    dropout: float = 0.0  # unsloth is fastest at 0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )  # every linear layer of a Gemma/Llama block
    use_rslora: bool = False  # rank-stabilised scaling, helps at r >= 64
    bias: Literal["none", "all", "lora_only"] = "none"  # "none" is optimised in unsloth
    use_gradient_checkpointing: bool | Literal["unsloth"] = "unsloth"  # "unsloth": ~30% less VRAM, long context


@dataclass
class DataConfig:
    source: str = "sample:hindi-dialogsum"  # sample:NAME | Hub id | .json/.jsonl/.csv/.parquet/.txt path
    task: str = "auto"  # one of TASKS; auto guesses from the columns
    config_name: str | None = None  # Hub dataset subset, e.g. "main" for openai/gsm8k
    split: str = "train"  # training split of the source
    test_split: str | None = None  # None: the source's "test" split if it has one, else carve test_size
    test_size: float = 0.1  # fraction (<1) or count (>=1) carved from train when there is no test split
    max_samples: int | None = None  # cap on training examples, for quick runs
    columns: dict[str, str] = field(default_factory=dict)  # canonical field -> your column, e.g. {dialogue: संवाद}
    template: str = "auto"  # one of TEMPLATES; auto: chat template for chat-like tasks when the tokenizer has one
    instruction: str | None = None  # summarization instruction; None = bilingual default
    system_prompt: str | None = None  # prepended as a system turn (merged into the first user turn for Gemma)
    train_on_completions_only: bool = True  # loss on the answer only; prompt tokens labelled -100
    last_turn_only: bool = False  # chat: train on the last assistant turn only instead of all of them
    block_size: int = 128  # raw text: tokens per training block
    skip_empty: bool = True  # rows with an empty answer are skipped and counted (False: error)
    cache_tokenized: bool = True  # reuse tokenized rows from ~/.cache/unsloth_sft/tokenized when nothing changed


@dataclass
class TrainConfig:
    max_steps: int | None = 60  # optimizer steps; None to train by num_train_epochs
    num_train_epochs: float | None = None  # used only when max_steps is None
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 4  # effective batch = batch x accumulation x processes
    learning_rate: float = 2e-4  # LoRA: 1e-4..3e-4; full fine-tuning: ~1e-5
    warmup_steps: int = 5
    lr_scheduler_type: str = "linear"
    optim: str = "adamw_8bit"  # bitsandbytes 8-bit AdamW; "adamw_torch" where bnb is missing
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 3407
    logging_steps: int = 1
    save_steps: int | None = None  # checkpoint every N steps; None: no intermediate checkpoints
    save_total_limit: int = 2  # keep the newest N checkpoints
    resume: Literal["auto", "never"] | str = "auto"  # auto: newest complete checkpoint in the run folder
    packing: bool = False  # pack rows into max_seq_length; pays off with flash-attention (GPU), slower on CPU
    padding_free: bool = False  # no pad tokens at all; needs flash-attention-style kernels on GPU
    group_by_length: bool = True  # batch similar lengths together: padding 14.5% -> 1.4%, +45% tok/s (bench/)
    bf16: bool | None = None  # None: on when the GPU supports it; always off on CPU
    report_to: list[str] = field(default_factory=lambda: ["none"])  # tensorboard, wandb, mlflow ...
    dataset_num_proc: int | None = None  # processes for tokenization; None = in-process
    ddp_find_unused_parameters: bool = False  # LoRA leaves no unused parameters: False is faster
    stop_on_nan: bool = True  # stop with the step number when the loss is NaN/inf


@dataclass
class EvalConfig:
    max_new_tokens: int = 64
    batch_size: int = 8  # prompts per generate() call (left padded)
    do_sample: bool = False  # greedy by default: comparable base vs tuned outputs
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    num_examples: int | None = None  # test examples to generate for; None = all
    num_shots: int = 0  # gsm8k: 0 or 1 worked example in the base model's prompt
    compare_base: bool = True  # also generate with the base model


@dataclass
class ExportConfig:
    save_methods: list[str] = field(default_factory=lambda: ["lora", "merged_16bit"])  # of SAVE_METHODS
    quantization_method: str = "q4_k_m"  # gguf only
    push_to_hub: str | None = None  # "user/repo"; token from HF_TOKEN or the login cache only
    private: bool = True
    max_shard_size: str = "5GB"  # safetensors shards above this size, with an index file
    license: str = "other"  # model card licence: set your base model's (e.g. gemma)


@dataclass
class RunConfig:
    run_name: str = "demo"
    output_dir: str = "runs"  # the run folder is output_dir/run_name
    finetune: Literal["lora", "qlora", "full"] = "lora"  # qlora needs load_in_4bit; full needs it off
    overwrite: bool = False  # replace a finished run of the same name
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- building from plain mappings


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; ints widen to floats, nothing else is guessed."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(err)
        choices = " or ".join(_describe(o) for o in typing.get_args(tp))
        raise ConfigError(f"{where}: expected {choices}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) is type(typing.get_args(tp)[0]):
            return value
        raise ConfigError(f"{where}: expected one of {list(typing.get_args(tp))}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if origin is list:
        if isinstance(value, str):  # a single module name is a list of one; saves a YAML gotcha
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, str, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as text; Python and YAML 1.2 read a number
            try:
                number = float(value)
            except ValueError:
                number = None
            if number is not None and math.isfinite(number):
                return number
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + str(list(typing.get_args(tp)))
    return {type(None): "null", bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, _type_name(tp)
    )


def _closest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(valid)}"


def _check_secret(key: str, where: str) -> None:
    if key.lower() in SECRET_KEYS or key.lower().endswith("_token"):
        raise ConfigError(
            f"{where}: a token does not belong in params; remove it and set the HF_TOKEN environment "
            "variable (or run `huggingface-cli login`) instead"
        )


def _build(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'params'}: expected a mapping of keys, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{where}.{key}" if where else str(key)
        _check_secret(str(key), dotted)
        if key not in names:
            raise ConfigError(f"unknown key '{dotted}'{_closest(str(key), names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if key == "lora" and value is None:  # `lora: null` means full fine-tuning
                kwargs["finetune"] = "full"
                continue
            kwargs[key] = _build(tp, value, dotted)
        else:
            kwargs[key] = _coerce(value, tp, dotted)
    return cls(**kwargs)


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


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a params file into a mapping, naming the file and line on any error."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "not valid YAML"
        raise ConfigError(f"{path}:{line}: {problem}; fix the YAML syntax") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model:, data:, train: ...), got a {type(raw).__name__}")
    return raw


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> RunConfig:
    """Load a RunConfig from a YAML file, then a mapping (papermill parameters), then dotted overrides."""
    raw: dict[str, Any] = read_yaml(path) if path else {}
    where = str(path) if path else "params"
    for key, value in copy.deepcopy(params or {}).items():  # a copy: the caller's mapping stays as it was
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    raw = apply_overrides(raw, overrides or [])
    try:
        cfg = _build(RunConfig, raw, "")
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    validate(cfg, where)
    return cfg


def validate(cfg: RunConfig, where: str = "params") -> None:
    """Refuse impossible combinations before any model loads, with the fix in the message."""

    def fail(msg: str) -> None:
        raise ConfigError(f"{where}: {msg}")

    t, d, m, lora = cfg.train, cfg.data, cfg.model, cfg.lora
    for name in ("run_name", "output_dir"):
        if not getattr(cfg, name).strip():
            fail(f"{name} is empty; give it a folder name")
    if os.sep in cfg.run_name or cfg.run_name in (".", ".."):
        fail(f"run_name '{cfg.run_name}' must be a plain folder name; put the parent in output_dir")
    if t.max_steps is None and t.num_train_epochs is None:
        fail("train.max_steps and train.num_train_epochs are both unset; set one (e.g. train.max_steps=60)")
    if t.max_steps is not None and t.max_steps < 1:
        fail(f"train.max_steps must be >= 1, got {t.max_steps}")
    if t.num_train_epochs is not None and t.num_train_epochs <= 0:
        fail(f"train.num_train_epochs must be > 0, got {t.num_train_epochs}")
    positive = {
        "train.per_device_train_batch_size": t.per_device_train_batch_size,
        "train.gradient_accumulation_steps": t.gradient_accumulation_steps,
        "train.logging_steps": t.logging_steps,
        "train.save_total_limit": t.save_total_limit,
        "model.max_seq_length": m.max_seq_length,
        "data.block_size": d.block_size,
        "eval.max_new_tokens": cfg.eval.max_new_tokens,
        "eval.batch_size": cfg.eval.batch_size,
    }
    for name, value in positive.items():
        if value < 1:
            fail(f"{name} must be >= 1, got {value}")
    if t.dataset_num_proc is not None and t.dataset_num_proc < 1:
        fail(f"train.dataset_num_proc must be >= 1 or null, got {t.dataset_num_proc}")
    if t.save_steps is not None and t.save_steps < 1:
        fail(f"train.save_steps must be >= 1 or null, got {t.save_steps}")
    if t.learning_rate <= 0:
        fail(f"train.learning_rate must be > 0, got {t.learning_rate}")
    if t.warmup_steps < 0:
        fail(f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
    if cfg.finetune != "full":
        if lora.r < 1:
            fail(f"lora.r must be >= 1, got {lora.r}; use finetune: full to train without LoRA")
        if lora.alpha < 1:
            fail(f"lora.alpha must be >= 1, got {lora.alpha}")
        if not 0 <= lora.dropout < 1:
            fail(f"lora.dropout must be in [0, 1), got {lora.dropout}")
        if not lora.target_modules:
            fail("lora.target_modules is empty; name the linear layers to adapt (e.g. q_proj, v_proj)")
    if cfg.finetune == "qlora" and not m.load_in_4bit:
        fail("finetune: qlora needs model.load_in_4bit: true (or use finetune: lora for 16-bit LoRA)")
    if cfg.finetune == "full" and m.load_in_4bit:
        fail("finetune: full cannot train 4-bit weights; set model.load_in_4bit: false")
    if d.task not in TASKS:
        fail(f"data.task '{d.task}' is not one of {', '.join(TASKS)}")
    if d.template not in TEMPLATES:
        fail(f"data.template '{d.template}' is not one of {', '.join(TEMPLATES)}")
    if d.test_size < 0:
        fail(f"data.test_size must be >= 0, got {d.test_size}")
    if d.test_size >= 1 and d.test_size != int(d.test_size):
        fail(f"data.test_size must be a fraction below 1 or a whole count, got {d.test_size}")
    if d.max_samples is not None and d.max_samples < 1:
        fail(f"data.max_samples must be >= 1 or null, got {d.max_samples}")
    if t.packing and d.task == "text" and d.block_size > m.max_seq_length:
        fail(
            f"data.block_size {d.block_size} is larger than model.max_seq_length {m.max_seq_length} with packing; "
            "lower block_size or raise max_seq_length"
        )
    if cfg.eval.num_shots not in (0, 1):
        fail(f"eval.num_shots must be 0 or 1, got {cfg.eval.num_shots}")
    if cfg.eval.num_examples is not None and cfg.eval.num_examples < 1:
        fail(f"eval.num_examples must be >= 1 or null, got {cfg.eval.num_examples}")
    for method in cfg.export.save_methods:
        if method not in SAVE_METHODS:
            fail(f"export.save_methods: '{method}' is not one of {', '.join(SAVE_METHODS)}")
    if cfg.finetune == "full" and "lora" in cfg.export.save_methods:
        fail("export.save_methods has 'lora' but finetune is full; use merged_16bit")
    repo = cfg.export.push_to_hub
    if repo is not None and (repo.count("/") != 1 or not all(repo.split("/"))):
        fail(f"export.push_to_hub '{repo}' must look like user/repo")


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (no secrets can be in it: loading refuses them)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def represent_str(dumper, value):
        # NEL and the Unicode line/paragraph separators read back as line breaks unless escaped in double quotes
        style = '"' if any(ch in value for ch in "\x85\u2028\u2029") else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, represent_str)
    text = yaml.dump(cfg.to_dict(), Dumper=Dumper, sort_keys=False, allow_unicode=True)
    Path(path).write_text(text, encoding="utf-8")
