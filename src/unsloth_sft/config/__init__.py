"""One typed config for a run: the schema by section (each with the rules that check it), loading and `--set`,
and what differs between two configs.

`types` the value types; `model`, `data`, `train`, `run` the sections and their rules; `load` YAML -> papermill
parameters -> dotted overrides -> `RunConfig`; `diff` the keys that differ between a saved config and a new one.
"""

from unsloth_sft.config.data import DataConfig, SourceConfig
from unsloth_sft.config.load import apply_overrides, load_config, read_yaml, save_config
from unsloth_sft.config.model import LoraConfig, ModelConfig
from unsloth_sft.config.run import EvalConfig, ExportConfig, RunConfig
from unsloth_sft.config.train import TrainConfig

__all__ = [
    "DataConfig",
    "EvalConfig",
    "ExportConfig",
    "LoraConfig",
    "ModelConfig",
    "RunConfig",
    "SourceConfig",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "read_yaml",
    "save_config",
]
