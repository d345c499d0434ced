"""Several processes (accelerate launch / torchrun): ranks, launch checks, collectives, sharded saves."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any

from unsloth_sft.config.run import RunConfig
from unsloth_sft.core.errors import ConfigError
from unsloth_sft.core.files import move_dir_into_place


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def sharded_launch() -> str | None:
    """The sharding the launcher asked for ("FSDP", "DeepSpeed"; from the env `accelerate launch` sets), else None."""
    if world_size() < 2:
        return None
    unsloth_fsdp2 = os.environ.get("UNSLOTH_FSDP2", "").strip().lower() in ("1", "true", "yes", "on", "native")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" or unsloth_fsdp2:
        return "FSDP"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return "DeepSpeed"
    return None


def check_launch(cfg: RunConfig) -> RunConfig:
    """Refuse what this launch cannot run, before anything is written; backend auto picks what works.

    DDP (every rank holds the whole model) works with both backends: unsloth 2026.10.9 supports it
    (unsloth/models/_ddp_defaults.py, models/loader_utils.py prepare_device_map) and trained on 2 CPU
    processes here. FSDP / DeepSpeed split the weights across ranks; this package then saves through
    Trainer.save_model on every rank, which is wired for the transformers backend only.
    """
    sharded = sharded_launch()
    if sharded is None:
        return cfg
    if cfg.model.backend == "unsloth":
        raise ConfigError(
            f"model.backend unsloth under a {sharded} launch ({world_size()} processes) is not supported here: "
            "set model.backend: transformers (--set model.backend=transformers), or launch with "
            "params/accelerate/ddp.yaml"
        )
    if cfg.model.load_in_4bit:  # also every qlora run (validate requires it)
        raise ConfigError(
            f"4-bit weights (model.load_in_4bit) cannot be sharded by {sharded} here: launch with "
            "params/accelerate/ddp.yaml, or use finetune: lora / full with model.load_in_4bit: false"
        )
    if cfg.model.backend == "auto":  # unsloth would import, but the sharded save path is the transformers one
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backend="transformers"))
    return cfg


def init_distributed() -> None:
    """Join the process group before the model loads, so ranks can agree (resume point) and each GPU rank
    loads onto its own device (accelerate pins cuda:LOCAL_RANK). One process: nothing to do."""
    if world_size() < 2:
        return
    import torch
    from accelerate import PartialState

    if not torch.cuda.is_available():
        # accelerate names a CPU rank's device "cpu:0", which torch.load cannot map to: resuming the optimizer
        # from a checkpoint fails ("don't know how to restore data location ... cpu:0"). Plain "cpu" works.
        os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
    PartialState(cpu=not torch.cuda.is_available())  # gloo on CPU, nccl on GPUs; the Trainer reuses this group


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank (a broadcast; every rank must call it). One process: `value`."""
    if not _distributed():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list:
    """`value` from every rank, in rank order (every rank must call it). One process: [value]."""
    if not _distributed():
        return [value]
    import torch.distributed as dist

    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def main_first():
    """A context where rank 0 goes first and the others wait (caches that one rank should fill)."""
    if not _distributed():
        return contextlib.nullcontext()
    from accelerate import PartialState

    return PartialState().main_process_first()


def save_sharded(trainer, target: Path, tokenizer) -> Path | None:
    """FSDP / DeepSpeed ZeRO-3 keep a slice of the weights on each rank: every rank joins Trainer.save_model
    (which gathers them), rank 0 writes `target`. None when the weights are whole on every rank (DDP)."""
    ds = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    if not (getattr(trainer, "is_fsdp_enabled", False) or (ds is not None and ds.zero_stage == 3)):
        return None
    target = Path(target)
    staging = target.with_name(f".{target.name}.sharded-tmp")
    trainer.save_model(str(staging))  # collective: a rank that skips it hangs the others
    if is_main_process():
        tokenizer.save_pretrained(staging)
        move_dir_into_place(staging, target)
    return target
