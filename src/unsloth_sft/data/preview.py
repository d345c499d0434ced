"""`unsloth-sft preview`: formatted examples with the trained span marked, token counts, truncation."""

from __future__ import annotations

from unsloth_sft.config.run import RunConfig
from unsloth_sft.models.tokens import adds_bos

START, END = "[[", "]]"  # marks around the tokens the loss covers


def mark_trained(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    """Decode an example, wrapping each run of trained tokens (label != -100) in [[ ]]."""
    out, run, trained = [], [], None
    for tok, lab in zip(input_ids, labels):
        is_trained = lab != -100
        if trained is not None and is_trained != trained:
            text = tokenizer.decode(run)
            out.append(f"{START}{text}{END}" if trained else text)
            run = []
        run.append(tok)
        trained = is_trained
    if run:
        text = tokenizer.decode(run)
        out.append(f"{START}{text}{END}" if trained else text)
    return "".join(out)


def preview(cfg: RunConfig, n: int = 3, tokenizer=None) -> str:
    """n formatted training examples plus a length summary, as text."""
    from unsloth_sft.data.examples import prepare

    if tokenizer is None:
        from transformers import AutoTokenizer

        from unsloth_sft.models.chat_templates import set_chat_template
        from unsloth_sft.models.sources import resolve_model_path

        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(cfg.model.name))
        backend = "unsloth" if cfg.model.backend == "unsloth" else "transformers"  # unsloth's names need it imported
        set_chat_template(tokenizer, cfg.model.chat_template, backend)  # as training renders (models.load)
    data = prepare(cfg, tokenizer)
    parts = [
        f"task: {data.task} | template: {data.template} | {len(data.train)} train examples, "
        f"{len(data.test) if data.test is not None else 0} test | {data.skipped} skipped (empty answer)"
    ]
    lengths = [len(r) for r in data.train["input_ids"]]
    trained = [sum(1 for x in r if x != -100) for r in data.train["labels"]]
    parts.append(
        f"tokens per example: min {min(lengths)}, mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)}; "
        f"trained tokens: {sum(trained)} of {sum(lengths)} ({100 * sum(trained) / max(sum(lengths), 1):.1f} %); "
        f"{data.truncated} of {len(lengths) + 0} examples cut at max_seq_length {cfg.model.max_seq_length}"
    )
    calls = tool_line(data.train_conversations)
    if calls:
        parts.append(calls)
    if adds_bos(tokenizer):  # the BOS rule (models.tokens): then every example should open with it, once
        parts.append(bos_line(tokenizer.bos_token, tokenizer.bos_token_id, data.train["input_ids"]))
    for i in range(min(n, len(data.train))):
        row = data.train[i]
        parts.append(
            f"--- example {i + 1}: {len(row['input_ids'])} tokens, "
            f"{sum(1 for x in row['labels'] if x != -100)} trained ({START} {END})\n"
            + mark_trained(tokenizer, row["input_ids"], row["labels"])
        )
    return "\n".join(parts)


def tool_line(conversations: list[list[dict]]) -> str | None:
    """How many examples offer tools or call them, and what of them is trained; None when none do."""
    from unsloth_sft.data.tools import uses_tools

    n = sum(uses_tools(c) for c in conversations)
    calls = sum(1 for c in conversations for m in c if m.get("tool_calls"))
    if not n:
        return None
    return (
        f"tool calls: {n} of {len(conversations)} examples use tools ({calls} assistant turns call them); trained: "
        "the assistant's calls and replies ([[ ]]), never the tool results or the tool list"
    )


def bos_line(bos: str, bos_id: int, rows: list[list[int]]) -> str:
    """How often BOS opens an example and whether any has it twice (a template's BOS plus the tokenizer's)."""
    first = sum(1 for r in rows if r and r[0] == bos_id)
    twice = sum(1 for r in rows if r.count(bos_id) > 1)
    warn = f"; {twice} have it more than once: fix the template or tokenizer" if twice else ", never twice"
    return f"{bos}: opens {first} of {len(rows)} examples{warn}"
