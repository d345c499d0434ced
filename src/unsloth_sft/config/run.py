"""The eval and export sections, the whole RunConfig, and the rules that tie sections together (`validate`)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field
from pydantic.dataclasses import dataclass

from unsloth_sft import tasks
from unsloth_sft.config.data import DataConfig, SourceConfig, check_data
from unsloth_sft.config.model import LoraConfig, ModelConfig, check_lora, layer_indices
from unsloth_sft.config.train import TrainConfig, check_eval_during_training, check_hub_strategy, check_train
from unsloth_sft.config.types import STRICT, Count, Finetune, GgufQuants, Number, SaveMethods
from unsloth_sft.core.errors import ConfigError


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
    # test examples `eval` scores (eval loss and generation): a larger test split is sampled with train.seed (the same
    # examples for base and tuned, in file order); None = all. Generation time grows with it: a 10 % carve of 100k rows
    # would be 10,000 generations per model
    max_samples: Count | None = 200
    num_examples: Count | None = None  # of those, the first N to generate for (eval loss still takes all); None = all
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
    if cfg.finetune == "full" and cfg.model.adapter:
        raise ConfigError(
            f"model.adapter '{cfg.model.adapter}' continues a LoRA adapter, but finetune is full; use finetune: lora "
            "(or qlora), or merge the adapter first and set model.name to the merged folder"
        )
    if cfg.finetune == "full" and cfg.model.load_in_4bit:
        raise ConfigError("finetune: full cannot train 4-bit weights; set model.load_in_4bit: false")
    if cfg.finetune == "full" and "lora" in cfg.export.save_methods:
        raise ConfigError("export.save_methods has 'lora' but finetune is full; use merged_16bit")
    if cfg.finetune == "full" and "lora_gguf" in cfg.export.save_methods:
        raise ConfigError("export.save_methods has 'lora_gguf' but finetune is full (no adapter); use gguf")


def check_packing(cfg: RunConfig) -> None:
    """Packed raw-text blocks must fit a sequence."""
    d, m = cfg.data, cfg.model
    blocks = d.task != "auto" and tasks.get(d.task).shape == "blocks"
    if cfg.train.packing and blocks and d.block_size > m.max_seq_length:
        raise ConfigError(
            f"data.block_size {d.block_size} is larger than model.max_seq_length {m.max_seq_length} with packing; "
            "lower block_size or raise max_seq_length"
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
        check_hub_strategy(cfg.train, cfg.export.push_to_hub)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
