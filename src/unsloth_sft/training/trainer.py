"""The SFTTrainer a run trains with: TRL's (or unsloth's), with a lean CPU loss (`training.loss`), the per-layer
compile option, and a warning when the backend drops packing or padding-free."""

from __future__ import annotations

from unsloth_sft.config.run import RunConfig
from unsloth_sft.core.quiet import warn
from unsloth_sft.runs.folder import CHECKPOINTS, ENVIRONMENT
from unsloth_sft.training.args import sft_config
from unsloth_sft.training.tracking import config_callback, tracker_env, trackers


def sft_trainer_class():
    """TRL's SFTTrainer (or unsloth's, once unsloth is imported); on a CPU, with the lean loss: the backbone once,
    then the head and cross-entropy only at each example's trained positions, chunked (`training.loss.lean_loss`).
    TRL 1.15's own loss needs Triton, which CPU builds of torch lack. Where the lean loss does not apply (a trained
    or scaled head, a model wrapped for several processes) the model's own loss runs on the batch cut to its
    trained positions (`trained_positions`)."""
    import torch
    from transformers import Trainer
    from trl import SFTTrainer

    if torch.cuda.is_available():  # unsloth's fused / TRL's chunked losses do better on a GPU
        return SFTTrainer

    from unsloth_sft.training.loss import lean_loss

    class SFTTrainerCPU(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not return_outputs and self.accelerator.unwrap_model(model) is model:
                # the backbone is called directly: accelerate's autocast wrapper of model.forward is entered here
                with self.accelerator.autocast(), lora_in_compute_dtype(model):
                    count = num_items_in_batch if self.model_accepts_loss_kwargs else None
                    loss = lean_loss(model, inputs, count)
                if loss is not None:
                    return loss
            return Trainer.compute_loss(self, model, trained_positions(inputs), return_outputs, num_items_in_batch)

    return SFTTrainerCPU


def lora_in_compute_dtype(model):
    """Under bf16 autocast: peft's LoRA layers keep their bf16 input (autocast casts the small fp32 master weights
    once per forward) instead of casting each activation to fp32 and the result back (~12 % of a bf16 CPU step).
    peft's own switch, `cast_input_dtype_enabled`, off for the step and restored after it."""
    import contextlib

    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    @contextlib.contextmanager
    def keep_input_dtype():
        layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        before = [m.cast_input_dtype_enabled for m in layers]
        for layer in layers:
            layer.cast_input_dtype_enabled = False
        try:
            yield
        finally:
            for layer, value in zip(layers, before):
                layer.cast_input_dtype_enabled = value

    return keep_input_dtype() if torch.is_autocast_enabled("cpu") else contextlib.nullcontext()


def trained_positions(inputs: dict) -> dict:
    """A batch whose forward pass computes logits only at positions that predict a trained token in some row (the
    fallback of the lean loss: one index set for all rows).

    The vocabulary projection is most of a small model's compute (Gemma-3 270M: 168M of its 268M parameters
    are the 262k x 640 embedding it shares with the output), and at prompt positions it only fed labels of
    -100. transformers' own loss (`shift_labels`, the Trainer's scaling for accumulation and processes) is
    kept; only the logits it sees shrink. bench/cpu_synthetic.py measures the difference.
    """
    targets = inputs["labels"][:, 1:]
    keep = (targets != -100).any(dim=0).nonzero().squeeze(-1)  # one index set for the batch's rows
    if len(keep) == 0:
        return inputs
    picked = targets[:, keep]
    return {**inputs, "labels": picked, "shift_labels": picked, "logits_to_keep": keep}


def early_stopping_callback(cfg: RunConfig):
    """transformers' EarlyStoppingCallback from train.early_stopping_*, or None when early stopping is off."""
    from transformers import EarlyStoppingCallback

    t = cfg.train
    if t.early_stopping_patience is None:
        return None
    return EarlyStoppingCallback(t.early_stopping_patience, t.early_stopping_threshold)


def build_trainer(cfg: RunConfig, model, tokenizer, train_dataset, eval_dataset=None, callbacks=(), backend=None):
    """An SFTTrainer over pre-tokenized rows (input_ids + labels: our masks are used as they are).

    `callbacks` run in order, before early stopping (a generation metric must be in the metrics it reads).
    """
    from unsloth_sft.training.callbacks import ComputeDtype

    args = sft_config(cfg, cfg.run_dir / CHECKPOINTS, backend)
    stopper = early_stopping_callback(cfg)
    callbacks = [*callbacks, *([stopper] if stopper else [])]
    names = trackers(cfg)
    tracker_env(cfg, names)
    trainer = sft_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if names:
        trainer.add_callback(config_callback(cfg, names, trainer.callback_handler.callbacks))
    show_progress(trainer)
    trainer.add_callback(ComputeDtype(cfg.run_dir / ENVIRONMENT))  # for the run report's environment
    warn_dropped(cfg, trainer.args, backend)
    if compile_layers_on(cfg, model):
        trainer.add_callback(compile_callback())
    return trainer


def warn_dropped(cfg: RunConfig, args, backend: str | None = None) -> list[str]:
    """One warning per option the backend turned off behind the config's back (unsloth's CPU backend drops packing
    and padding-free: SDPA on a CPU would attend across packed examples); the options dropped."""
    dropped = [key for key in ("packing", "padding_free") if getattr(cfg.train, key) and not getattr(args, key, False)]
    for key in dropped:
        warn(
            f"train.{key} is on but the {backend or 'training'} backend turned it off (on a CPU it needs "
            f"FlashAttention to keep packed examples apart); the run trains padded batches. Set train.{key}: false "
            "to silence this, or model.backend: transformers to keep it"
        )
    return dropped


COMPILE_MIN_PARAMS = 50_000_000  # auto compiles models this big or bigger: a smaller one's step is Python-bound


def compile_layers_on(cfg: RunConfig, model=None) -> bool:
    """train.compile as it will run: per-layer torch.compile on a CPU only (unsloth compiles on a GPU itself).
    auto: on where the model computes in bf16 (+31 % a step on a bf16 Xeon: the norms' and LoRA's casts fuse) and
    has COMPILE_MIN_PARAMS or more, with a C++ compiler (Inductor builds its CPU kernels with one). In fp32 it
    measured +14 % a step on 2 cores but costs 1.5-6 min in the first steps: more than a 40-step recipe saves."""
    import shutil

    import torch

    from unsloth_sft.models.backends import dtype_name

    setting = cfg.train.compile
    if setting is False or torch.cuda.is_available():
        return False
    found = any(shutil.which(cc) for cc in ("g++", "c++", "clang++", "cl"))
    if setting is True:
        if not found:
            warn("train.compile is true but no C++ compiler was found (Inductor needs one); training eagerly")
        return found
    size = sum(p.numel() for p in model.parameters()) if model is not None else COMPILE_MIN_PARAMS
    return found and size >= COMPILE_MIN_PARAMS and dtype_name(cfg.model.dtype) == "bfloat16"


def decoder_layers(model) -> list:
    """The transformer blocks of a model (`...DecoderLayer` modules), however it is wrapped."""
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def compile_callback():
    """A TrainerCallback that runs torch.compile (Inductor C++) on each decoder layer for training, as unsloth's
    UNSLOTH_CPU_COMPILE does: one graph, dynamic in the sequence length, reused by every layer; the norms' casts, the
    LoRA adds and the elementwise ops fuse (+31 % on a bf16 Xeon, STACK.md). Eager again for evaluation and after
    training: generation with a KV cache would recompile each layer."""
    from transformers import TrainerCallback

    class CompileLayers(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            for layer in decoder_layers(model):
                layer.compile(dynamic=True)

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if not any(getattr(layer, "_compiled_call_impl", None) for layer in decoder_layers(model)):
                self.on_train_begin(args, state, control, model=model)  # after an evaluation

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if control.should_evaluate:
                _eager(model)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            _eager(model)

    return CompileLayers()


def _eager(model) -> None:
    """Undo `Module.compile` (it keeps the compiled call in `_compiled_call_impl`; None is eager again)."""
    for layer in decoder_layers(model):
        layer._compiled_call_impl = None


def show_progress(trainer) -> None:
    """Our step lines (loss, tok/s, ETA) instead of the Trainer's bar (its HTML table in a notebook, interactive or
    papermill) and its raw log dicts; theirs too with --verbose."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback

    from unsloth_sft.core.quiet import is_verbose
    from unsloth_sft.training.callbacks import StepProgress

    if not is_verbose():
        for theirs in (ProgressCallback, NotebookProgressCallback, PrinterCallback):
            trainer.remove_callback(theirs)
    trainer.add_callback(StepProgress())
