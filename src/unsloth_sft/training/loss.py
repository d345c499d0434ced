"""The CPU training loss: the output projection and cross-entropy only at the positions each example trains on, in
row chunks, so that no [rows, vocabulary] fp32 logits tensor is ever formed.

Gemma-3 270M shares a 262k x 640 embedding with its output: at ~300 trained positions a step, full fp32 logits are
~300 MB and their log_softmax was ~14 % of a bf16 step (STACK.md). Here the backbone runs once, its last hidden
states are cut to each row's trained positions (no union over the batch), and the head + loss run chunk by chunk:
unsloth's CPU kernel (`unsloth_zoo.cpu.ops.cpu_chunked_log_probs`, the one it routes TRL's fused head to) once
unsloth's CPU backend is loaded, else `_ChunkedNLL` below. Both form the gradient of the hidden states inside the
forward (the head is frozen), so backward costs no second pass over the vocabulary.
"""

from __future__ import annotations

import functools
import sys

CHUNK_ELEMENTS = 16 * 1024 * 1024  # logits per chunk (rows x vocab): 64 MB of fp32, 64 rows of Gemma-3's 262k
SCALED_HEADS = ("logit_scale", "logits_scaling", "output_multiplier", "lm_head_multiplier")  # not handled: fall back


def head_parts(model):
    """(backbone, head weight, final-logit softcap) when the model's logits are plain `lm_head(hidden)` (softcap
    allowed) from a frozen, bias-free head; None otherwise (a trained or scaled head, an MoE: the model's own loss)."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or head.bias is not None or head.weight.requires_grad:
        return None
    text = base.config.get_text_config()
    if any(getattr(text, name, None) not in (None, 1, 1.0) for name in SCALED_HEADS):
        return None
    if getattr(text, "output_router_logits", False) or getattr(text, "num_experts", None):
        return None
    backbone = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    if backbone is None or backbone is base:
        return None
    return backbone, head.weight, getattr(text, "final_logit_softcapping", None)


def trained_rows(hidden, labels):
    """Each example's hidden states at positions that predict a trained token, flattened: ([n, hidden], [n])."""
    targets = labels[:, 1:]
    mask = targets != -100
    return hidden[:, :-1][mask], targets[mask]


def lean_loss(model, inputs: dict, num_items_in_batch=None):
    """Summed cross-entropy over each example's trained tokens / `num_items_in_batch` (the Trainer's count over the
    accumulated batch; None: this batch's trained tokens), as transformers' causal-LM loss gives; None when the
    model's head does not allow it (`head_parts`)."""
    import torch

    parts = head_parts(model)
    if parts is None:
        return None
    backbone, weight, softcap = parts
    labels = inputs["labels"]
    kwargs = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels", "logits_to_keep", "use_cache")}
    hidden = backbone(**kwargs, use_cache=False).last_hidden_state
    rows, targets = trained_rows(hidden, labels)
    if rows.shape[0] == 0:  # nothing trained in this batch: a zero that keeps the graph
        return hidden.sum() * 0.0
    nll = head_nll(rows, weight, targets, softcap)
    divisor = len(targets) if num_items_in_batch is None else num_items_in_batch
    return nll.sum() / torch.as_tensor(divisor, dtype=nll.dtype).clamp(min=1)


def head_nll(rows, weight, targets, softcap=None):
    """-log p(target) for each row of `rows` through the frozen head `weight`, chunked: unsloth's CPU kernel when
    unsloth's CPU backend is loaded (importing it here would patch transformers for the transformers backend)."""
    ops = sys.modules.get("unsloth_zoo.cpu.ops")
    if ops is not None and hasattr(ops, "cpu_chunked_log_probs"):
        log_probs = ops.cpu_chunked_log_probs(rows, weight, None, targets, 1.0, None, softcap, 1.0, outputs=())[0]
        return -log_probs
    import torch

    if torch.is_autocast_enabled("cpu"):  # the matmuls in the autocast dtype, the softmax in fp32
        dtype = torch.get_autocast_dtype("cpu")
        rows, weight = rows.to(dtype), weight.to(dtype)
    chunk = max(1, CHUNK_ELEMENTS // weight.shape[0])
    with torch.autocast("cpu", enabled=False):
        return _chunked_nll().apply(rows, weight.detach(), targets, softcap, chunk)


@functools.cache
def _chunked_nll():
    import torch

    class _ChunkedNLL(torch.autograd.Function):
        """-log_softmax(softcap(rows @ weight.T))[target] per row, one [chunk, vocab] fp32 block at a time; the
        gradient of `rows` is formed in forward (the loss is linear in its output), backward only scales it."""

        @staticmethod
        def forward(ctx, rows, weight, targets, softcap, chunk):
            grad = torch.empty_like(rows) if rows.requires_grad else None
            nll = torch.empty(rows.shape[0], dtype=torch.float32)
            for start in range(0, rows.shape[0], chunk):
                end = min(start + chunk, rows.shape[0])
                y = targets[start:end].unsqueeze(-1)
                z = (rows[start:end] @ weight.t()).float()
                capped = None
                if softcap:
                    capped = torch.tanh(z / softcap)
                    z = capped * softcap
                lse = torch.logsumexp(z, dim=-1, keepdim=True)
                nll[start:end] = (lse - z.gather(-1, y)).squeeze(-1)
                if grad is not None:  # softmax - onehot, through the softcap's tanh
                    p = z.sub_(lse).exp_()
                    p.scatter_add_(-1, y, torch.full_like(y, -1, dtype=p.dtype))
                    if capped is not None:
                        p.mul_(1 - capped * capped)
                    grad[start:end] = p.to(weight.dtype) @ weight
            ctx.save_for_backward(grad if grad is not None else torch.empty(0))
            ctx.has_grad = grad is not None
            return nll

        @staticmethod
        def backward(ctx, d_nll):
            (grad,) = ctx.saved_tensors
            d_rows = grad * d_nll.to(grad.dtype).unsqueeze(-1) if ctx.has_grad else None
            return d_rows, None, None, None, None

    return _ChunkedNLL
