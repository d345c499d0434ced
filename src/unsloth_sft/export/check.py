"""Proof that an export computes the model that was evaluated: adapter vs merged, merged vs each GGUF.

On the run's own eval prompts: top-1 next-token agreement (teacher-forced on the reference's greedy reply),
the largest logit difference, and whether greedy replies are equal. Written to RUN/export_check.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any  # noqa: F401

from unsloth_sft.config.run import RunConfig
from unsloth_sft.core.errors import RunError
from unsloth_sft.runs.folder import EXPORT_CHECK

CHECK_FILE = EXPORT_CHECK  # RUN/export_check.json

CHECK_MAX_NEW_TOKENS = 32  # greedy tokens per prompt: enough to see a reply drift, cheap on CPU


def eval_prompts(cfg: RunConfig, tokenizer, n: int) -> tuple[list[str], str]:
    """(prompts, template): the run's own first `n` inference prompts (`data.examples.pick_examples`), rendered as
    eval and infer render them; raw text continues the opening of each document ("plain" for its Modelfile)."""
    from unsloth_sft.data.examples import load_examples, pick_examples
    from unsloth_sft.data.prompts import choose_template

    examples = load_examples(cfg)
    template = "plain" if examples.text_column is not None else choose_template(examples.task, cfg.data, tokenizer)
    return pick_examples(examples, n).prompts(tokenizer, template), template


def greedy(model, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation of one unpadded prompt, stopping at the run's stop tokens (new tokens only)."""
    import torch

    from unsloth_sft.models.tokens import stop_token_ids

    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop_token_ids(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
        )
    return out[0, len(prompt_ids) :].tolist()


def compare(reference, other, tokenizer, prompts: list[str], max_new_tokens: int = CHECK_MAX_NEW_TOKENS) -> dict:
    """Agreement of `other` with `reference` on the prompts (teacher-forced on the reference's greedy reply).

    `greedy_equal` counts prompts where `other`'s top-1 token at every position of the reference's greedy reply is
    the reference's token: greedy decoding picks exactly those, so `other`'s own greedy reply is the same (and
    stops at the same stop token or length). One generation per prompt instead of two: half the check's time.
    """
    import torch

    agree = positions = same = 0
    max_diff = 0.0
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        ref_reply = greedy(reference, tokenizer, ids, max_new_tokens)
        seq = torch.tensor([ids + ref_reply])
        with torch.no_grad():
            a, b = reference(seq).logits[0].float(), other(seq).logits[0].float()
        picks = b[len(ids) - 1 : len(ids) - 1 + len(ref_reply)].argmax(-1)  # other's choice for each reply token
        same += bool((picks == torch.tensor(ref_reply, dtype=picks.dtype)).all())
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        positions += seq.shape[1]
        max_diff = max(max_diff, float((a - b).abs().max()))
    return {
        "top1_agreement": round(agree / max(positions, 1), 4),
        "positions": positions,
        "max_logit_diff": round(max_diff, 5),
        "greedy_equal": same,
        "prompts": len(prompts),
    }


def load_float32(path: str | Path, adapter: str | Path | None = None):
    """A model in float32 for comparison (with an unmerged LoRA adapter on top when given)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    if getattr(model.config, "quantization_config", None):
        model = model.dequantize()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    return model.eval()


def check_merged(base_path: str, adapter: Path, merged: Path, tokenizer, prompts: list[str], min_agreement: float):
    """(figures, problem or None): the merged folder against base + adapter, unmerged."""
    with_adapter = load_float32(base_path, adapter)
    merged_model = load_float32(merged)
    figures = compare(with_adapter, merged_model, tokenizer, prompts)
    figures["min_agreement"] = min_agreement
    figures["passed"] = figures["top1_agreement"] >= min_agreement
    problem = None
    if not figures["passed"]:
        problem = (
            f"{merged} disagrees with the adapter it was merged from: top-1 next-token agreement "
            f"{figures['top1_agreement']:.3f} < export.check_min_agreement {min_agreement} on {len(prompts)} eval "
            f"prompts (max logit difference {figures['max_logit_diff']:.3g}); re-merge with "
            "`unsloth-sft export RUN --method merged_16bit`"
        )
    return figures, problem


def load_gguf_into(gguf_file: Path, reference_config):
    """The GGUF's weights, de-quantized by transformers' GGUF loader, in the merged model's architecture.

    The merged config, not the one the loader derives from GGUF metadata: the GGUF has no field for
    Gemma-2's query_pre_attn_scalar (the loader would default it to 256); llama.cpp's scale is checked apart.
    """
    from unsloth_sft.models.gguf import load_gguf_weights

    return load_gguf_weights(gguf_file, reference_config).eval()


def llama_cpp_figures(gguf_file: Path, merged_model, tokenizer, prompts: list[str]) -> dict:
    """The same figures from llama.cpp itself, through llama-cpp-python, when it is installed (else a note)."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return {"skipped": "llama-cpp-python is not installed (pip install llama-cpp-python builds llama.cpp)"}
    try:
        import numpy as np
        import torch
        from llama_cpp import Llama

        llm = Llama(model_path=str(gguf_file), logits_all=True, n_ctx=2048, verbose=False, n_threads=2)
        agree = positions = same = 0
        max_diff = 0.0
        for prompt in prompts:
            ids = tokenizer(prompt, add_special_tokens=False).input_ids
            ref_reply = greedy(merged_model, tokenizer, ids, CHECK_MAX_NEW_TOKENS)
            seq = ids + ref_reply
            llm.reset()
            llm.eval(seq)
            b = np.asarray(llm.scores[: len(seq)])
            with torch.no_grad():
                a = merged_model(torch.tensor([seq])).logits[0].float().numpy()
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            positions += len(seq)
            max_diff = max(max_diff, float(np.abs(a - b).max()))
            llm.reset()
            stop, reply = stops(tokenizer), []
            for token in llm.generate(ids, temp=0.0, top_k=1):
                if token in stop or len(reply) >= CHECK_MAX_NEW_TOKENS:
                    break
                reply.append(token)
            same += reply == [t for t in ref_reply if t not in stop]
        return {
            "top1_agreement": round(agree / max(positions, 1), 4),
            "max_logit_diff": round(max_diff, 5),
            "greedy_equal": same,
            "prompts": len(prompts),
        }
    except Exception as err:  # an optional second opinion: record why it failed, never fail the export on it
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"}


def stops(tokenizer) -> set[int]:
    from unsloth_sft.models.tokens import stop_token_ids

    return set(stop_token_ids(tokenizer))


def check_gguf(gguf_file: Path, merged_model, tokenizer, prompts: list[str]) -> dict:
    """Merged vs one GGUF (transformers' loader; llama-cpp-python too when installed); lossy when not identical."""
    figures = compare(merged_model, load_gguf_into(gguf_file, merged_model.config), tokenizer, prompts)
    figures["lossy"] = figures["top1_agreement"] < 1.0 or figures["greedy_equal"] < figures["prompts"]
    figures["llama_cpp"] = llama_cpp_figures(gguf_file, merged_model, tokenizer, prompts)
    return figures


def fail_if(problem: str | None) -> None:
    if problem:
        raise RunError(problem)
