"""Helpers both CPU benchmarks (`bench.cpu_synthetic`, `bench.cpu_real`) use: the bundled conversations, token
counting, step timing, the full-logits and plain-TRL trainers, and running variants in worker processes."""

from __future__ import annotations

import random
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench.common import spawn

MAX_LENGTH = 1024  # params/demo-cpu.yaml's max_seq_length, and TRL's default max_length
BATCH, ACCUM = 2, 4  # the library's defaults (per_device_train_batch_size, gradient_accumulation_steps)


# ---------------------------------------------------------------- data and counting


def bench_conversations(n: int) -> list[list[dict]]:
    """`n` conversations: the bundled summarization and chat samples (all splits), shuffled (seed 0), replicated."""
    from unsloth_sft.config import DataConfig
    from unsloth_sft.data.rows import conversations
    from unsloth_sft.data.sources import read_source

    pool: list[list[dict]] = []
    for source, task in (("sample:hindi-dialogsum", "summarization"), ("sample:chat", "chat")):
        cfg = DataConfig(source=source, task=task)
        for split in read_source(cfg).values():
            pool.extend(conversations(split, task, cfg)[0])
    rng = random.Random(0)
    out: list[list[dict]] = []
    while len(out) < n:
        block = list(pool)
        rng.shuffle(block)
        out.extend(block)
    return out[:n]


class TokenCounter:
    """Wraps a data collator; counts tensor slots, real (non-pad) tokens and supervised tokens of every batch.

    `trained_positions`: the trainer computes logits only at columns that predict a trained token in some row
    (`unsloth_sft.training.trainer.trained_positions`); otherwise at every position. `per_batch` keeps each
    batch's counts, in the order the trainer drew them (a data loader may draw one batch beyond the last step).
    """

    def __init__(self, collator, pad_token_id: int, trained_positions: bool = False):
        self.collator = collator
        self.pad_token_id = pad_token_id
        self.trained_positions = trained_positions
        self.slots = self.real = self.supervised = self.batches = 0
        self.per_batch: list[dict] = []

    def __call__(self, examples):
        batch = self.collator(examples)
        ids, labels = batch["input_ids"], batch["labels"]
        real = ids != self.pad_token_id
        counts = {
            "slots": ids.numel(),
            "real": int(real.sum()),
            "supervised": int((labels[:, 1:] != -100).sum()),  # labels shift by one inside the loss
        }
        keep = (labels[:, 1:] != -100).any(dim=0)
        if self.trained_positions and keep.any():  # logits at the kept columns of every row (pad rows included)
            counts["logits"] = int(real[:, :-1][:, keep].sum())
            counts["logits_slots"] = ids.shape[0] * int(keep.sum())
        else:
            counts["logits"], counts["logits_slots"] = counts["real"], ids.numel()
        self.batches += 1
        self.slots += counts["slots"]
        self.real += counts["real"]
        self.supervised += counts["supervised"]
        self.per_batch.append(counts)
        return batch


def summed(batches: list[dict]) -> dict:
    """Per-batch counts (TokenCounter.per_batch) added up key by key."""
    keys = {k for b in batches for k in b}
    return {k: sum(b.get(k, 0) for b in batches) for k in sorted(keys)}


# ---------------------------------------------------------------- timing and trainers


class Clock:
    """TrainerCallback-like timestamps: train begin, the end of every optimizer step, train end."""

    def __init__(self):
        self.begin = self.first_step = self.end = None
        self.cpu_begin = self.cpu_end = None  # process CPU seconds: robust to other jobs sharing the cores
        self.step_ends: list[tuple[float, float]] = []  # (wall, CPU) at the end of each optimizer step

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class _Clock(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                clock.begin, clock.cpu_begin = time.time(), time.process_time()

            def on_step_end(self, args, state, control, **kwargs):
                clock.step_ends.append((time.time(), time.process_time()))
                if clock.first_step is None:
                    clock.first_step = clock.step_ends[0][0]

            def on_train_end(self, args, state, control, **kwargs):
                clock.end, clock.cpu_end = time.time(), time.process_time()

        return _Clock()


def naive_rows(tokenizer, convs, cfg, template: str = "chat", max_length: int = MAX_LENGTH) -> dict:
    """Every example padded to `max_length` with the pad token; labels on every real token, -100 on padding."""
    import dataclasses

    from unsloth_sft.data.tokenize import tokenize

    data_cfg = dataclasses.replace(cfg.data, train_on_completions_only=False)
    tokens, _ = tokenize(tokenizer, convs, template, data_cfg, max_length)
    pad = tokenizer.pad_token_id
    ids = [x + [pad] * (max_length - len(x)) for x in tokens["input_ids"]]
    labels = [x + [-100] * (max_length - len(x)) for x in tokens["labels"]]
    return {"input_ids": ids, "labels": labels}


def model_loss_trainer_class():
    """TRL's SFTTrainer with `transformers.Trainer.compute_loss`: the model's own loss on full logits.

    TRL 1.15's own compute_loss always runs a fused lm_head + loss kernel that needs Triton, which a CPU build of
    torch lacks (it fails on the first step). Without it, the model's own loss is what is left: logits at every
    position, then cross-entropy, as `Trainer` (and TRL before the fused kernel) does. The library's CPU trainer
    (`training.trainer.sft_trainer_class`) also computes only the logits of trained positions; this class does not.
    """
    from transformers import Trainer
    from trl import SFTTrainer

    class SFTTrainerModelLoss(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return SFTTrainerModelLoss


def model_loss_trainer(cfg, model, tokenizer, dataset, callbacks: list, backend: str):
    """The library's `build_trainer` with the model's own full-logits loss: the same SFTConfig, data and callbacks."""
    from unsloth_sft.runs.folder import CHECKPOINTS
    from unsloth_sft.training.args import sft_config

    return model_loss_trainer_class()(
        model=model,
        args=sft_config(cfg, cfg.run_dir / CHECKPOINTS, backend),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )


def plain_trl_trainer(model, tokenizer, texts: list[str], out_dir: Path, callbacks: list, lora=None, **settings):
    """SFTTrainer with its defaults (max_length 1024, full-sequence loss, no packing, gradient checkpointing);
    only CPU, batch and length of training set (`settings`: SFTConfig arguments over this section's ones)."""
    import datasets
    from peft import LoraConfig
    from trl import SFTConfig

    args = SFTConfig(
        **{
            "output_dir": str(out_dir),
            "use_cpu": True,
            "bf16": False,  # SFTConfig's default bf16=True needs a GPU
            "per_device_train_batch_size": BATCH,
            "gradient_accumulation_steps": ACCUM,
            "num_train_epochs": 1,
            "optim": "adamw_torch",
            "learning_rate": 2e-4,
            "report_to": "none",
            "save_strategy": "no",
            "seed": 3407,
            "data_seed": 3407,
            **settings,
        }
    )
    peft_config = LoraConfig(
        r=lora.r if lora else 16,
        lora_alpha=lora.alpha if lora else 16,
        lora_dropout=lora.dropout if lora else 0.0,
        task_type="CAUSAL_LM",
        target_modules=list(lora.target_modules)
        if lora
        else ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    # TRL's own loss needs Triton (absent from CPU torch); the model's loss on full logits is what remains
    return model_loss_trainer_class()(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_dict({"text": texts}),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )


# ---------------------------------------------------------------- worker processes


def run_each(variants: list[str], run: Callable[[str], dict]) -> list[dict]:
    """`run(variant)` for each variant. One variant: its measurements (an error raises). Several (--smoke): one
    row each, {"variant": ..., "error": ...} for one that failed (the next one still runs)."""
    if len(variants) == 1:
        return [run(variants[0])]
    rows = []
    for variant in variants:
        try:
            rows.append(run(variant))
        except Exception as err:  # the next variant still runs; the traceback is in the worker's log
            traceback.print_exc()
            rows.append({"variant": variant, "error": f"{type(err).__name__}: {err}"})
    return rows


def by_backend(variants: list[str], uses_unsloth: Callable[[str], bool]) -> list[list[str]]:
    """The variants in at most two groups, one per worker process: those without unsloth, those with it (unsloth,
    once imported, patches transformers and TRL for the rest of its process)."""
    groups = ([v for v in variants if not uses_unsloth(v)], [v for v in variants if uses_unsloth(v)])
    return [g for g in groups if g]


def run_workers(module: str, jobs: list[list[str]]) -> tuple[list, Path]:
    """Worker processes of `python -m module`, one per argument list in `jobs`, all at the same time (nothing is
    timed); each one's JSON result (None if it failed), and the folder of their logs."""
    from concurrent.futures import ThreadPoolExecutor

    work = Path(tempfile.mkdtemp(prefix="unsloth-sft-bench-smoke-"))
    with ThreadPoolExecutor(len(jobs)) as pool:  # subprocesses: the threads only wait
        results = list(
            pool.map(lambda i: spawn(module, jobs[i], work / f"{i}.json", work / f"{i}.log")[1], range(len(jobs)))
        )
    return results, work


def smoke_report(groups: list[list[str]], results: list) -> list[str]:
    """Print whether each variant trained at least one optimizer step (`results`: one worker's per group, in
    order); the variants that did not."""
    failed = []
    for group, done in zip(groups, results):
        rows = {r["variant"]: r for r in (done or {}).get("rows", [])}
        for variant in group:
            row = rows.get(variant, {"error": "the worker process failed"})
            ok = row.get("steps", 0) >= 1
            print(
                f"{variant}: " + (f"ok ({row['steps']} optimizer step(s))" if ok else f"FAILED: {row.get('error')}"),
                flush=True,
            )
            if not ok:
                failed.append(variant)
    return failed
