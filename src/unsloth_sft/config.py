"""One typed config for a run: YAML file -> papermill parameters / dotted overrides -> RunConfig.

The schema is pydantic dataclasses in strict mode: each field's type, closed choices (`Literal`) and bounds are
checked when a section is built, and nothing is guessed (YAML `max_steps: "5"` is an error, not 5). The rules
that tie fields together are small `check_*` functions beside their section; `validate` runs them.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import typing
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from unsloth_sft import tasks
from unsloth_sft.errors import ConfigError

Template = Literal["auto", "chat", "qa", "alpaca", "plain"]
SaveMethod = Literal["lora", "merged_16bit", "merged_4bit_forced", "gguf"]
# GGUF types: the first four straight from llama.cpp's converter; the k-quants and legacy ones need llama-quantize.
GgufQuant = Literal[
    "f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q4_k_m", "q4_k_s", "q4_0", "q3_k_m", "q2_k"
]
Backend = Literal["auto", "unsloth", "transformers"]
Finetune = Literal["lora", "qlora", "full"]
# transformers' SchedulerType values (5.17); tests/test_controls.py checks this list against the installed enum
Scheduler = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
    "greedy",
]
# Generation metrics a run can score during training (the names of eval/metrics.json); "loss" is the Trainer's own
EvalMetric = Literal["rouge1", "rouge2", "rougeL", "chrf++", "bleu", "exact_match"]
# One name for lora.target_modules instead of a list: resolved against the model's own linear layers (model.py)
TARGET_PRESETS = ("all-linear", "attention", "mlp")
# Named groups of train.freeze (beside name globs)
FREEZE_GROUPS = ("embeddings", "norms", "attention", "mlp", "lm_head")
TASKS: tuple[str, ...] = ("auto", *tasks.names())  # the built-in ones; data.task takes any registered task
TEMPLATES: tuple[str, ...] = typing.get_args(Template)
SAVE_METHODS: tuple[str, ...] = typing.get_args(SaveMethod)
BACKENDS: tuple[str, ...] = typing.get_args(Backend)
# Keys that look like secrets: refused in params files, -p and --set (issue: token from the environment only).
SECRET_KEYS = ("token", "hf_token", "hub_token", "api_key", "wandb_api_key")


def _yaml11_number(value: Any) -> Any:
    """YAML 1.1 reads 1e-4 (no dot) as text; Python and YAML 1.2 read a number. Other text stays text (an error)."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    return value


def _one_is_a_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value  # a single module name is a list of one; a YAML gotcha


def _text_keys(value: Any) -> Any:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value  # YAML `1: x` has an int key


def _yaml11_no(value: Any) -> Any:
    return "no" if value is False else value  # YAML 1.1 reads a bare `no` as false


def _task_name(value: Any) -> Any:
    """data.task: auto or a registered task (unsloth_sft.tasks), checked like a Literal so the error lists them."""
    choices = ("auto", *tasks.names())
    if isinstance(value, str) and value in choices:
        return value
    expected = ", ".join(map(repr, choices[:-1])) + f" or {choices[-1]!r}"
    raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})


Task = Annotated[str, BeforeValidator(_task_name)]
Number = Annotated[float, BeforeValidator(_yaml11_number)]  # an int widens to a float; text only if YAML 1.1 missed it
Positive = Annotated[Number, Field(gt=0)]
Count = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Fraction = Annotated[Number, Field(ge=0, lt=1)]
NonNegativeNumber = Annotated[Number, Field(ge=0)]
Layers = str | list[int] | None  # a layer range "0-3" / "20-" / "0,2,5", or a list of layer indices
Names = Annotated[list[str], BeforeValidator(_one_is_a_list)]
SaveMethods = Annotated[list[SaveMethod], BeforeValidator(_one_is_a_list)]
GgufQuants = Annotated[list[GgufQuant], BeforeValidator(_one_is_a_list), Field(min_length=1)]
Columns = Annotated[dict[str, str], BeforeValidator(_text_keys)]
STRICT = ConfigDict(strict=True)


@dataclass(config=STRICT)
class ModelConfig:
    name: str = "tiny-gemma2"  # Hub id, local folder, or "tiny-gemma2" (built offline, ~200k params)
    backend: Backend = "auto"  # auto = unsloth when it imports
    max_seq_length: Count = 2048  # tokens; longer examples are truncated (see `unsloth-sft preview`)
    load_in_4bit: bool = True  # NF4 via bitsandbytes: ~4x less weight memory, QLoRA
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPUs that have it
    trust_remote_code: bool = False  # only for models whose code you have read
    chat_template: str | None = None  # a template name (gemma, llama3, chatml ...) or a .jinja file; None = the model's


@dataclass(config=STRICT)
class LoraConfig:
    r: int = 16  # rank: 8-64 typical; more = more capacity and memory
    alpha: int = 16  # scaling = alpha / r (or / sqrt(r) with rslora)
    dropout: Number = 0.0  # unsloth is fastest at 0
    target_modules: Names = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )  # every linear layer of a Gemma/Llama block; or one preset: all-linear, attention, mlp
    use_rslora: bool = False  # rank-stabilised scaling, helps at r >= 64
    use_dora: bool = False  # weight-decomposed LoRA (peft): often better at low rank, ~1.5-2x slower steps
    layers_to_transform: Layers = None  # adapt only these decoder layers ("0-3", "20-", [0, 5]); None = all
    bias: Literal["none", "all", "lora_only"] = "none"  # "none" is optimised in unsloth
    # "auto": unsloth's offloaded checkpointing on a GPU (~30% less VRAM, long context), none on a CPU, where
    # recomputing costs 21-41 % of throughput and memory is rarely the limit (bench/README.md)
    use_gradient_checkpointing: bool | Literal["unsloth", "auto"] = "auto"


def gradient_checkpointing(lora: LoraConfig) -> bool | str:
    """lora.use_gradient_checkpointing with "auto" resolved for this machine: "unsloth" on a GPU, False on a CPU."""
    if lora.use_gradient_checkpointing != "auto":
        return lora.use_gradient_checkpointing
    import torch

    return "unsloth" if torch.cuda.is_available() else False


def check_lora(lora: LoraConfig) -> None:
    """Bounds of a LoRA section that trains (finetune: full ignores the section, so a zero rank is fine there)."""
    if lora.r < 1:
        raise ConfigError(f"lora.r must be >= 1, got {lora.r}; use finetune: full to train without LoRA")
    if lora.alpha < 1:
        raise ConfigError(f"lora.alpha must be >= 1, got {lora.alpha}")
    if not 0 <= lora.dropout < 1:
        raise ConfigError(f"lora.dropout must be in [0, 1), got {lora.dropout}")
    if not lora.target_modules:
        raise ConfigError("lora.target_modules is empty; name the linear layers to adapt (e.g. q_proj, v_proj)")
    if lora.layers_to_transform is not None:
        layer_indices(lora.layers_to_transform, "lora.layers_to_transform")


def layer_indices(spec: str | list[int], key: str, num_layers: int | None = None) -> list[int]:
    """A layer range ("0-3", "20-", "-4" = the last four, "0,2,5") or a list of indices, as sorted indices.

    An open range ("20-", "-4") needs `num_layers`; without it the spec is only checked for its syntax.
    """
    fix = f"{key}: expected layer indices like [0, 1], '0-3', '20-' (to the last) or '-4' (the last four)"
    if isinstance(spec, list):
        if any(i < 0 for i in spec) or not spec:
            raise ConfigError(f"{fix}, got {spec}")
        indices = sorted(set(spec))
    else:
        indices = []
        for part in str(spec).replace(" ", "").split(","):
            first, dash, last = part.partition("-")
            if not (first.isdigit() or (dash and not first)) or not (last.isdigit() or not last):
                raise ConfigError(f"{fix}, got {spec!r}")
            if not dash:
                indices.append(int(first))
            elif num_layers is None:
                continue  # syntax checked; the model's depth resolves an open range
            elif not first:
                indices.extend(range(max(0, num_layers - int(last)), num_layers))
            else:
                indices.extend(range(int(first), (int(last) if last else num_layers - 1) + 1))
        indices = sorted(set(indices))
    if num_layers is not None and (not indices or indices[-1] >= num_layers):
        raise ConfigError(f"{key} {spec!r}: this model has {num_layers} layers (0-{num_layers - 1})")
    return indices


@dataclass(config=STRICT)
class SourceConfig:
    """One source of a mixed run (data.sources); the other data keys (test_size, template ...) are shared."""

    source: str  # sample:NAME | Hub id | local file or folder, as data.source
    task: Task = "auto"  # auto guesses from this source's columns
    columns: Columns = field(default_factory=dict)  # canonical field -> this source's column
    config_name: str | None = None  # Hub dataset subset
    split: str = "train"  # training split of this source
    test_split: str | None = None  # None: this source's "test" split if it has one, else carve data.test_size
    weight: Positive | None = None  # share of the mix, relative to the other weighted sources (none oversampled)
    samples: Count | None = None  # exactly this many training examples (repeated when the source has fewer)


@dataclass(config=STRICT)
class DataConfig:
    source: str = "sample:hindi-dialogsum"  # sample:NAME | Hub id | .json/.jsonl/.csv/.parquet/.txt path
    task: Task = "auto"  # auto guesses from the columns
    config_name: str | None = None  # Hub dataset subset, e.g. "main" for openai/gsm8k
    split: str = "train"  # training split of the source
    test_split: str | None = None  # None: the source's "test" split if it has one, else carve test_size
    test_size: Annotated[Number, Field(ge=0)] = 0.1  # fraction (<1) or count (>=1) carved from train if no test split
    max_samples: Count | None = None  # cap on training examples, for quick runs
    columns: Columns = field(default_factory=dict)  # canonical field -> your column, e.g. {dialogue: संवाद}
    template: Template = "auto"  # auto: chat template for chat-like tasks when the tokenizer has one
    instruction: str | None = None  # summarization instruction; None = bilingual default
    system_prompt: str | None = None  # prepended as a system turn (merged into the first user turn for Gemma)
    train_on_completions_only: bool = True  # loss on the answer only; prompt tokens labelled -100
    last_turn_only: bool = False  # chat: train on the last assistant turn only instead of all of them
    block_size: Count = 128  # raw text: tokens per training block
    skip_empty: bool = True  # rows with an empty answer are skipped and counted (False: error)
    cache_tokenized: bool = True  # reuse tokenized rows from ~/.cache/unsloth_sft/tokenized when nothing changed
    language: Names | None = None  # model card languages (ISO 639-1, e.g. [hi, en]); None: the task's (tasks.py)
    sources: list[SourceConfig] | None = None  # several sources mixed in one run (instead of data.source)


def check_data(d: DataConfig) -> None:
    """test_size is a fraction or a whole count, never 2.5 examples."""
    if d.test_size >= 1 and d.test_size != int(d.test_size):
        raise ConfigError(f"data.test_size must be a fraction below 1 or a whole count, got {d.test_size}")
    check_sources(d)


def source_names(d: DataConfig) -> list[str]:
    """The run's data: data.source, or each source of data.sources."""
    return [s.source for s in d.sources] if d.sources is not None else [d.source]


def check_sources(d: DataConfig) -> None:
    """A mix: at least one source, each with a weight or a sample count (not both), trained as one chat task."""
    if d.sources is None:
        return
    if not d.sources:
        raise ConfigError("data.sources is empty; list at least one {source: ...} or use data.source")
    if d.task not in ("auto", "chat"):
        raise ConfigError(
            f"data.task {d.task} with data.sources: a mix trains as one chat task; set each source's task in "
            "data.sources[i].task and leave data.task auto"
        )
    for i, s in enumerate(d.sources):
        if s.weight is not None and s.samples is not None:
            raise ConfigError(f"data.sources[{i}] ({s.source}): give weight or samples, not both")


@dataclass(config=STRICT)
class TrainConfig:
    max_steps: Count | None = 60  # optimizer steps; None to train by num_train_epochs
    num_train_epochs: Positive | None = None  # used only when max_steps is None
    per_device_train_batch_size: Count = 2  # examples per forward pass and process
    gradient_accumulation_steps: Count = 4  # effective batch = batch x accumulation x processes
    learning_rate: Positive = 2e-4  # LoRA: 1e-4..3e-4; full fine-tuning: ~1e-5
    warmup_steps: NonNegative = 5  # linear warm-up from 0 to learning_rate
    warmup_ratio: Fraction | None = None  # warm-up as a fraction of all steps (e.g. 0.03); replaces warmup_steps
    lr_scheduler_type: Scheduler = "linear"  # transformers' scheduler names: cosine, constant, ...
    optim: str = "adamw_8bit"  # bitsandbytes 8-bit AdamW; "adamw_torch" where bnb is missing
    weight_decay: NonNegativeNumber = 0.01  # AdamW decoupled weight decay
    max_grad_norm: NonNegativeNumber = 1.0  # gradient clipping; 0 = off
    neftune_noise_alpha: Positive | None = None  # NEFTune embedding noise (paper: 5); None = off
    seed: int = 3407  # weights init (LoRA), data order, dropout
    logging_steps: Count = 1  # log the loss every N optimizer steps
    save_steps: Count | None = None  # checkpoint every N steps; None: no intermediate checkpoints
    save_total_limit: Count = 2  # keep the newest N checkpoints
    resume: str = "auto"  # "auto": newest complete checkpoint in the run folder; "never"; or a checkpoint path
    packing: bool = False  # pack rows into max_seq_length; pays off with flash-attention (GPU), slower on CPU
    padding_free: bool = False  # no pad tokens at all; needs flash-attention-style kernels on GPU
    group_by_length: bool = True  # batch similar lengths together: padding 14.5% -> 1.4%, +45% tok/s (bench/)
    bf16: bool | None = None  # None: on when the GPU supports it; always off on CPU
    report_to: Names = field(default_factory=lambda: ["none"])  # tensorboard, wandb, mlflow ...
    dataset_num_proc: Count | None = None  # processes for tokenization; None = in-process
    ddp_find_unused_parameters: bool = False  # LoRA leaves no unused parameters: False is faster
    stop_on_nan: bool = True  # stop with the step number when the loss is NaN/inf
    # evaluation during training (eval loss on the test split; the Trainer's own evaluation loop)
    eval_strategy: Annotated[Literal["auto", "no", "steps", "epoch"], BeforeValidator(_yaml11_no)] = (
        "auto"  # auto: "steps" when eval_steps is set, else no
    )
    eval_steps: Count | None = None  # evaluate every N optimizer steps
    eval_on_start: bool = False  # also evaluate before the first step (a baseline point on the curve)
    per_device_eval_batch_size: Count | None = None  # None = per_device_train_batch_size (a forward that fits)
    eval_metric: EvalMetric | None = None  # also generate and score eval_samples test examples at each evaluation
    eval_samples: Count = 16  # test examples generated for eval_metric (greedy, eval.max_new_tokens)
    # early stopping and the best checkpoint (transformers' EarlyStoppingCallback, load_best_model_at_end)
    early_stopping_patience: Count | None = None  # stop after N evaluations without improvement; None = off
    early_stopping_threshold: NonNegativeNumber = 0.0  # an improvement must beat the best by more than this
    metric_for_best_model: str = "loss"  # "loss" (eval loss) or train.eval_metric's name
    greater_is_better: bool | None = None  # None: False for a loss, True for any other metric
    load_best_model_at_end: bool | None = None  # None: on with early stopping; the adapter/merged model = best step
    # freezing for finetune: full (LoRA: see lora.layers_to_transform)
    freeze: Names = field(default_factory=list)  # groups (embeddings, norms, attention, mlp, lm_head) or name globs
    trainable_layers: Layers = None  # decoder layers left trainable ("20-", [0, 1]); the others are frozen


def check_train(t: TrainConfig) -> None:
    """A run needs a length: steps or epochs."""
    if t.max_steps is None and t.num_train_epochs is None:
        raise ConfigError(
            "train.max_steps and train.num_train_epochs are both unset; set one (e.g. train.max_steps=60)"
        )


def eval_strategy(t: TrainConfig) -> str:
    """The Trainer's eval_strategy: "auto" evaluates every eval_steps when that is set."""
    if t.eval_strategy == "auto":
        return "steps" if t.eval_steps else "no"
    return t.eval_strategy


def load_best(t: TrainConfig) -> bool:
    """load_best_model_at_end as it will run: on with early stopping unless set."""
    return t.early_stopping_patience is not None if t.load_best_model_at_end is None else t.load_best_model_at_end


def best_metric_name(t: TrainConfig) -> str:
    """metric_for_best_model as the Trainer's eval log names it (eval_loss, eval_rougeL ...)."""
    name = t.metric_for_best_model
    return name if name.startswith("eval_") else f"eval_{name}"


def check_eval_during_training(t: TrainConfig) -> None:
    """Evaluation during training, early stopping and the best checkpoint agree with each other."""
    strategy = eval_strategy(t)
    if strategy == "steps" and t.eval_steps is None:
        raise ConfigError("train.eval_strategy is steps but train.eval_steps is unset; set it (e.g. 10)")
    if strategy == "no":
        for key, on in (
            ("eval_steps", t.eval_steps is not None),
            ("eval_on_start", t.eval_on_start),
            ("eval_metric", t.eval_metric is not None),
            ("early_stopping_patience", t.early_stopping_patience is not None),
            ("load_best_model_at_end", bool(t.load_best_model_at_end)),
            ("lr_scheduler_type reduce_lr_on_plateau", t.lr_scheduler_type == "reduce_lr_on_plateau"),
        ):
            if on:
                raise ConfigError(
                    f"train.{key} needs evaluation during training, but train.eval_strategy is no; "
                    "set train.eval_steps (e.g. 10) or train.eval_strategy: epoch"
                )
    metric = best_metric_name(t)
    known = ["eval_loss"] + ([f"eval_{t.eval_metric}"] if t.eval_metric else [])
    if metric not in known:
        raise ConfigError(
            f"train.metric_for_best_model '{t.metric_for_best_model}' is not computed during training; use loss"
            + (f" or {t.eval_metric}" if t.eval_metric else ", or set train.eval_metric (e.g. rougeL) and name it")
        )
    if t.early_stopping_patience is not None and not load_best(t):
        raise ConfigError(
            "train.early_stopping_patience with train.load_best_model_at_end false would export the last, not the "
            "best, step; remove load_best_model_at_end: false"
        )
    if load_best(t) and strategy == "steps" and t.save_steps and t.save_steps % t.eval_steps:
        raise ConfigError(
            f"train.save_steps {t.save_steps} is not a multiple of train.eval_steps {t.eval_steps}; the best "
            "checkpoint must be saved when it is evaluated: unset save_steps or make it a multiple"
        )


def check_freeze(cfg: RunConfig) -> None:
    """train.freeze / trainable_layers freeze parts of a full fine-tune; LoRA chooses its layers itself."""
    t = cfg.train
    if cfg.finetune != "full" and (t.freeze or t.trainable_layers is not None):
        key = "freeze" if t.freeze else "trainable_layers"
        raise ConfigError(
            f"train.{key} is for finetune: full; with LoRA the base is frozen already: choose the adapted layers "
            "with lora.layers_to_transform and lora.target_modules"
        )
    if t.trainable_layers is not None:
        layer_indices(t.trainable_layers, "train.trainable_layers")


def check_options(cfg: RunConfig) -> None:
    """Optimizer and adapter options that cannot work together."""
    t, lora = cfg.train, cfg.lora
    if t.neftune_noise_alpha is not None and (t.packing or t.padding_free):
        what = "packing" if t.packing else "padding_free"
        raise ConfigError(
            f"train.neftune_noise_alpha with train.{what}: NEFTune scales its noise by the row length, and a "
            f"{what} row holds several examples; set train.{what}: false or drop neftune_noise_alpha"
        )
    if t.warmup_ratio is not None and t.warmup_steps:
        raise ConfigError(
            f"train.warmup_ratio {t.warmup_ratio} and train.warmup_steps {t.warmup_steps} are both set; "
            "set train.warmup_steps: 0 to warm up by ratio"
        )
    if cfg.finetune == "full" and (lora.use_dora or lora.layers_to_transform is not None):
        key = "use_dora" if lora.use_dora else "layers_to_transform"
        raise ConfigError(f"lora.{key} has no effect with finetune: full; remove it or use finetune: lora")


@dataclass(config=STRICT)
class EvalConfig:
    max_new_tokens: Count = 64  # generated tokens per test prompt
    batch_size: Count = 8  # prompts per generate() call (left padded)
    do_sample: bool = False  # greedy by default: comparable base vs tuned outputs
    temperature: Number = 1.0  # sampling only
    top_k: int = 50  # sampling only
    top_p: Number = 1.0  # sampling only
    no_repeat_ngram_size: int = 0  # 0 = off
    repetition_penalty: Number = 1.0  # 1.0 = off
    num_examples: Count | None = None  # test examples to generate for; None = all
    num_shots: Annotated[int, Field(ge=0, le=1)] = 0  # gsm8k: 0 or 1 worked example in the base model's prompt
    compare_base: bool = True  # also generate with the base model


@dataclass(config=STRICT)
class ExportConfig:
    save_methods: SaveMethods = field(default_factory=lambda: ["lora", "merged_16bit"])  # adapter, merged 16-bit
    gguf_quant: GgufQuants = field(
        default_factory=lambda: ["f16", "q8_0"]
    )  # gguf only; q4_k_m etc. need llama-quantize
    # merged vs adapter, top-1 next-token agreement on the eval prompts below which the export fails (bf16 rounding
    # of a real model's merged weights flips a few near-ties; a merge that lost or mis-scaled the adapter flips many)
    check_min_agreement: Annotated[Number, Field(ge=0, le=1)] = 0.95
    check_prompts: Count = 4  # eval prompts the export check runs (each: a teacher-forced pass and a greedy decode)
    quantization_method: str | None = None  # ignored: replaced by gguf_quant; kept so older runs' config.yaml loads
    push_to_hub: str | None = None  # "user/repo"; token from HF_TOKEN or the login cache only
    private: bool = True  # a pushed repo is private unless set false
    max_shard_size: str = "5GB"  # safetensors shards above this size, with an index file
    # model card licence; None = taken from the base model: the packaged-model catalogue or the model's own card,
    # else 'other'
    license: str | None = None


def check_export(x: ExportConfig) -> None:
    """A Hub repo id is user/repo."""
    repo = x.push_to_hub
    if repo is not None and (repo.count("/") != 1 or not all(repo.split("/"))):
        raise ConfigError(f"export.push_to_hub '{repo}' must look like user/repo")


@dataclass(config=STRICT)
class RunConfig:
    run_name: str = "demo"  # the run's folder name
    output_dir: str = "runs"  # the run folder is output_dir/run_name
    finetune: Finetune = "lora"  # qlora needs load_in_4bit; full needs it off
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
        out = dataclasses.asdict(self)
        if self.data.sources is not None:  # a mix has no data.source (config.yaml must load again)
            del out["data"]["source"]
        return out

    def with_sources(self, sources: list[SourceConfig]) -> RunConfig:
        """This config with each mixed source's task resolved, as a run saves it in config.yaml."""
        return dataclasses.replace(self, data=dataclasses.replace(self.data, sources=sources))

    def with_task(self, task: str) -> RunConfig:
        """This config with data.task resolved (auto -> the detected task), as a run saves it in config.yaml."""
        return dataclasses.replace(self, data=dataclasses.replace(self.data, task=task))


SECTIONS = {
    "model": ModelConfig,
    "lora": LoraConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "export": ExportConfig,
}


def check_names(cfg: RunConfig) -> None:
    """run_name and output_dir make a folder: neither empty, and run_name one plain name."""
    for name in ("run_name", "output_dir"):
        if not getattr(cfg, name).strip():
            raise ConfigError(f"{name} is empty; give it a folder name")
    if os.sep in cfg.run_name or cfg.run_name in (".", ".."):
        raise ConfigError(f"run_name '{cfg.run_name}' must be a plain folder name; put the parent in output_dir")


def check_finetune(cfg: RunConfig) -> None:
    """finetune agrees with the LoRA section, the 4-bit loading and the save methods."""
    if cfg.finetune != "full":
        check_lora(cfg.lora)
    if cfg.finetune == "qlora" and not cfg.model.load_in_4bit:
        raise ConfigError("finetune: qlora needs model.load_in_4bit: true (or use finetune: lora for 16-bit LoRA)")
    if cfg.finetune == "full" and cfg.model.load_in_4bit:
        raise ConfigError("finetune: full cannot train 4-bit weights; set model.load_in_4bit: false")
    if cfg.finetune == "full" and "lora" in cfg.export.save_methods:
        raise ConfigError("export.save_methods has 'lora' but finetune is full; use merged_16bit")


def check_packing(cfg: RunConfig) -> None:
    """Packed raw-text blocks must fit a sequence."""
    d, m = cfg.data, cfg.model
    blocks = d.task != "auto" and tasks.get(d.task).shape == "blocks"
    if cfg.train.packing and blocks and d.block_size > m.max_seq_length:
        raise ConfigError(
            f"data.block_size {d.block_size} is larger than model.max_seq_length {m.max_seq_length} with packing; "
            "lower block_size or raise max_seq_length"
        )


def validate(cfg: RunConfig, where: str = "params") -> None:
    """Refuse impossible combinations before any model loads, with the fix in the message.

    Types, closed choices and bounds were checked when the sections were built; these are the rules between fields.
    """
    try:
        check_names(cfg)
        check_train(cfg.train)
        check_eval_during_training(cfg.train)
        check_finetune(cfg)  # check_lora too, unless full fine-tuning
        check_data(cfg.data)
        check_packing(cfg)
        check_freeze(cfg)
        check_options(cfg)
        check_export(cfg.export)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


# ---------------------------------------------------------------- building from plain mappings


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
        raise ConfigError(
            f"{path}: expected a mapping of sections (model:, data:, train: ...), got a {type(raw).__name__}"
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
    """Write the resolved config as YAML, after `header` comment lines (no secrets: loading refuses them)."""
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
    Path(path).write_text(comments + text, encoding="utf-8")
