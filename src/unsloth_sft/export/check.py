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


def compare(
    reference,
    other,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = CHECK_MAX_NEW_TOKENS,
    replies: list[list[int]] | None = None,
) -> dict:
    """Agreement of `other` with `reference` on the prompts (teacher-forced on the reference's greedy reply).

    `greedy_equal` counts prompts where `other`'s top-1 token at every position of the reference's greedy reply is
    the reference's token: greedy decoding picks exactly those, so `other`'s own greedy reply is the same (and
    stops at the same stop token or length). One generation per prompt instead of two: half the check's time.
    """
    import torch

    agree = positions = same = 0
    max_diff = 0.0
    for n, prompt in enumerate(prompts):
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        ref_reply = replies[n] if replies is not None else greedy(reference, tokenizer, ids, max_new_tokens)
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


def until_stop(ids: list[int], stop: set[int]) -> list[int]:
    """A reply's tokens up to its first stop token, the stop kept as -1 (any stop ends a reply the same way)."""
    out = []
    for t in ids:
        if t in stop:
            return out + [-1]
        out.append(t)
    return out


def answer_tokens(answer: dict, stop: set[int]) -> list[int]:
    """llama-server's reply tokens to the first stop (-1), an end-of-generation stop counted even when not returned."""
    got = until_stop(answer.get("tokens") or [], stop)
    if answer.get("stop_type") == "eos" and (not got or got[-1] != -1):
        got.append(-1)
    return got


def llama_cpp_figures(
    gguf_file: Path, tokenizer, prompts: list[str], replies: list[list[int]], max_new_tokens: int = CHECK_MAX_NEW_TOKENS
) -> dict:
    """The GGUF in llama.cpp itself (llama-server, greedy) against the merged model's greedy `replies`.

    `greedy_equal`: llama.cpp's greedy reply is the merged model's, token for token, to the same stop;
    `token_agreement`: over the reference replies' positions, how often llama.cpp's top-1 next token is the
    reference's, teacher-forced on the reference (past the first difference, one 1-token request per position);
    `prompt_tokens_equal`: llama.cpp's own tokenizer gives the prompt the ids training's gives it.
    """
    from unsloth_sft.export.llama_cpp import HOW_TO_BUILD, LlamaServer, server_binary

    binary = server_binary()
    if binary is None:
        return {"skipped": f"llama.cpp's llama-server is not built; {HOW_TO_BUILD}"}
    stop = stops(tokenizer)
    same = agree = positions = same_ids = new_tokens = 0
    seconds = 0.0
    differ: list[dict] = []
    try:
        with LlamaServer(gguf_file, binary) as server:
            for i, (prompt, reply) in enumerate(zip(prompts, replies)):
                ids = tokenizer(prompt, add_special_tokens=False).input_ids
                same_ids += server.tokenize(prompt) == ids
                answer = server.complete(ids, max_new_tokens)
                seconds += answer.get("timings", {}).get("predicted_ms", 0.0) / 1000
                new_tokens += len(answer["tokens"])
                ref, got = until_stop(reply, stop), answer_tokens(answer, stop)
                same += ref == got
                first = next((k for k, (a, b) in enumerate(zip(ref, got)) if a != b), min(len(ref), len(got)))
                agree += min(first, len(ref))
                for k in range(first, len(ref)):  # teacher-forced past the first difference
                    nxt = answer_tokens(server.complete(ids + reply[:k], 1, cache=True), stop)
                    agree += nxt[:1] == ref[k : k + 1]
                positions += len(ref)
                if ref != got:
                    differ.append(
                        {
                            "prompt": i,
                            "at_token": first,
                            "merged": tokenizer.decode([t for t in ref if t >= 0]),
                            "llama_cpp": tokenizer.decode([t for t in got if t >= 0]),
                        }
                    )
    except RunError as err:  # reported in export_check.json and printed; the transformers-side figures stand
        return {"error": str(err)}
    return {
        "greedy_equal": same,
        "prompts": len(prompts),
        "token_agreement": round(agree / max(positions, 1), 4),
        "positions": positions,
        "prompt_tokens_equal": f"{same_ids}/{len(prompts)}",
        "tokens_per_s": round(new_tokens / seconds, 1) if seconds else None,
        "differences": differ,
    }


def llama_cpp_line(name: str, figures: dict) -> str:
    """What the export prints about a GGUF in llama.cpp: a mismatch said plainly."""
    if "skipped" in figures or "error" in figures:
        return f"gguf: {name} in llama.cpp: not checked ({figures.get('skipped') or figures.get('error')})"
    verdict = (
        "same greedy replies as merged/"
        if figures["greedy_equal"] == figures["prompts"]
        else f"MISMATCH: {figures['prompts'] - figures['greedy_equal']} of {figures['prompts']} greedy replies "
        f"differ from merged/'s (first at token {figures['differences'][0]['at_token']} of prompt "
        f"{figures['differences'][0]['prompt']})"
    )
    tokens = (
        ""
        if figures["prompt_tokens_equal"].split("/")[0] == str(figures["prompts"])
        else (f"; only {figures['prompt_tokens_equal']} prompts tokenize the same in llama.cpp")
    )
    return (
        f"gguf: {name} in llama.cpp: {verdict}; token agreement {figures['token_agreement']:.3f} over "
        f"{figures['positions']} reply tokens{tokens}"
    )


def stops(tokenizer) -> set[int]:
    from unsloth_sft.models.tokens import stop_token_ids

    return set(stop_token_ids(tokenizer))


def check_gguf(gguf_file: Path, merged_model, tokenizer, prompts: list[str]) -> dict:
    """Merged vs one GGUF: transformers' loader (the weights), then llama.cpp itself (what users run); lossy when
    not identical. The merged model's greedy replies are computed once for both."""
    replies = [greedy(merged_model, tokenizer, tokenizer(p, add_special_tokens=False).input_ids, CHECK_MAX_NEW_TOKENS)
               for p in prompts]  # fmt: skip
    figures = compare(merged_model, load_gguf_into(gguf_file, merged_model.config), tokenizer, prompts, replies=replies)
    figures["lossy"] = figures["top1_agreement"] < 1.0 or figures["greedy_equal"] < figures["prompts"]
    figures["llama_cpp"] = llama_cpp_figures(gguf_file, tokenizer, prompts, replies)
    print(llama_cpp_line(Path(gguf_file).name, figures["llama_cpp"]), flush=True)
    return figures


def fail_if(problem: str | None) -> None:
    if problem:
        raise RunError(problem)
