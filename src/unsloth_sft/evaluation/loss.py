"""Eval loss: mean cross-entropy per trained token, with logits only where a trained token is predicted."""

from __future__ import annotations

LOGITS_BUDGET = 2**26  # float32 logits held at once in eval_loss: 256 MiB (a 262k vocabulary x 256 positions)


def eval_loss(
    model,
    tokenizer,
    dataset,
    batch_size: int = 8,
    per_row: bool | None = None,
    desc: str = "eval loss",
    progress: bool = True,
) -> float | None:
    """Mean cross-entropy per trained token (labels != -100) over a tokenized dataset.

    Logits are computed only at positions that predict a trained token (`logits_to_keep`), in row chunks
    that keep them under LOGITS_BUDGET: full logits of a 262k-vocabulary model at batch 8 x 512 tokens
    would be 4 GiB in float32. On a CPU each row goes alone, cut to its own length and with its own trained
    positions: a batch shares one index set (the union of its rows'), and the vocabulary projection at the
    other rows' positions was a third of Gemma-3 270M's eval time. `per_row` forces either way (None: on a CPU).
    """
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from unsloth_sft.core.progress import Progress

    if dataset is None or len(dataset) == 0:
        return None
    collate = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().weight.shape[0]
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad(), Progress(len(dataset), desc, "example", progress and len(dataset) > 1) as bar:
        for start in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = collate([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
            targets = batch["labels"][:, 1:]
            keep = (targets != -100).any(dim=0).nonzero().squeeze(-1)  # positions whose next token is trained
            if len(keep) == 0:
                bar.update(len(rows))
                continue
            one_row = device.type == "cpu" if per_row is None else per_row
            chunk = 1 if one_row else max(1, LOGITS_BUDGET // (len(keep) * vocab))
            for r in range(0, len(rows), chunk):
                try:
                    ids, mask, labels = (batch[k][r : r + chunk] for k in ("input_ids", "attention_mask", "labels"))
                    if chunk == 1:  # one row: no padding, and only its own trained positions
                        length = int(mask.sum())
                        ids, mask, labels = ids[:, :length], mask[:, :length], labels[:, :length]
                        keep = (labels[:, 1:] != -100).any(dim=0).nonzero().squeeze(-1)
                        if len(keep) == 0:
                            continue
                    logits = model(
                        input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep.to(device)
                    ).logits.float()
                    labels = labels[:, 1:][:, keep].to(device)
                    loss = torch.nn.functional.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
                    )
                    total += loss.item()
                    count += int((labels != -100).sum())
                finally:  # counted once scored (or skipped): a single big batch still shows its rows go by
                    bar.update(min(chunk, len(rows) - r))
    return total / count if count else None
