"""Generation: batched, left-padded, with the run's stop tokens and decoding settings (unsloth's fast path when on)."""

from __future__ import annotations

import contextlib
from typing import Any

from unsloth_sft.config.run import EvalConfig
from unsloth_sft.models.tokens import stop_token_ids


def generation_kwargs(ecfg: EvalConfig, tokenizer) -> dict[str, Any]:
    """generate() arguments from config; sampling knobs only when sampling (greedy ignores them)."""
    kwargs: dict[str, Any] = dict(
        max_new_tokens=ecfg.max_new_tokens,
        do_sample=ecfg.do_sample,
        eos_token_id=stop_token_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        repetition_penalty=ecfg.repetition_penalty,
    )
    if ecfg.no_repeat_ngram_size:
        kwargs["no_repeat_ngram_size"] = ecfg.no_repeat_ngram_size
    if ecfg.do_sample:
        kwargs.update(temperature=ecfg.temperature, top_k=ecfg.top_k, top_p=ecfg.top_p)
    return kwargs


@contextlib.contextmanager
def inference_mode(model, backend: str | None):
    """unsloth's fast inference path while generating, then back to training mode."""
    fast = None
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        fast = FastLanguageModel
        fast.for_inference(model)
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        if fast is not None:
            fast.for_training(model)
        if was_training:
            model.train()


def token_counter(bar):
    """A StoppingCriteria that never stops: it counts generated positions into `bar` (made on demand, so that
    importing this module imports no transformers)."""
    from transformers import StoppingCriteria

    class Counter(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            import torch

            bar.update(1)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return Counter()


def generate(
    model,
    tokenizer,
    prompts: list[str],
    ecfg: EvalConfig,
    backend: str | None = None,
    progress: bool = True,
    streamer=None,
    stopping_criteria=None,
    desc: str = "generating",
) -> list[str]:
    """Batched generation with left padding; returns only the new text of each prompt.

    `streamer` and `stopping_criteria` go to `model.generate` (the playground streams and stops with them).
    """
    import torch

    from unsloth_sft.core.progress import Progress

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models continue from the last real token
    device = next(model.parameters()).device
    outputs: list[str] = []
    batches = range(0, len(prompts), ecfg.batch_size)
    kwargs = generation_kwargs(ecfg, tokenizer)
    # progress by generated token position, batch after batch: one big batch is minutes of work on a CPU
    total = len(batches) * ecfg.max_new_tokens
    shown = progress and len(prompts) > 1
    try:
        with inference_mode(model, backend), torch.no_grad(), Progress(total, desc, "token", shown) as bar:
            from transformers import StoppingCriteriaList

            criteria = StoppingCriteriaList([*(stopping_criteria or []), *([token_counter(bar)] if shown else [])])
            for start in batches:
                batch = prompts[start : start + ecfg.batch_size]
                enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                out = model.generate(**enc, **kwargs, streamer=streamer, stopping_criteria=criteria)
                new = out[:, enc["input_ids"].shape[1] :]
                outputs.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
                done = (start // ecfg.batch_size + 1) * ecfg.max_new_tokens  # a batch that stopped early counts whole
                bar.update(done - bar.n, f"{len(outputs)}/{len(prompts)} examples")
    finally:
        tokenizer.padding_side = side
    return outputs


def generation_speed(tokenizer, outputs: list[str], seconds: float) -> dict:
    """New tokens per second of wall time for one generate() pass over the eval prompts (batched, greedy)."""
    tokens = sum(len(tokenizer(o, add_special_tokens=False).input_ids) for o in outputs)
    return {"new_tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / max(seconds, 1e-9), 1)}
