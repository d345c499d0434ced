"""The value types of the config schema: closed choices (`Literal`), bounded numbers, and the YAML 1.1 fixes."""

from __future__ import annotations

import math
import typing
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from unsloth_sft import tasks

Template = Literal["auto", "chat", "qa", "alpaca", "plain"]
SaveMethod = Literal["lora", "merged_16bit", "merged_4bit_forced", "gguf", "lora_gguf"]
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
# One name for lora.target_modules instead of a list: resolved against the model's own linear layers (models/lora.py)
TARGET_PRESETS = ("all-linear", "attention", "mlp")
# Named groups of train.freeze (beside name globs)
FREEZE_GROUPS = ("embeddings", "norms", "attention", "mlp", "lm_head")


TEMPLATES: tuple[str, ...] = typing.get_args(Template)
SAVE_METHODS: tuple[str, ...] = typing.get_args(SaveMethod)
BACKENDS: tuple[str, ...] = typing.get_args(Backend)


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


TaskName = Annotated[str, BeforeValidator(_task_name)]
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
STRICT = ConfigDict(strict=True, extra="forbid")  # types as written; an unknown key is an error
