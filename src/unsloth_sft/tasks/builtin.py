"""The built-in tasks: summarization (the Hindi dialogue sample), GSM8K, Q/A, chat, instruction data, prompt/completion
and raw text. Add one with a `register(Task(...))` here, or `unsloth_sft.register_task(...)` from a notebook."""

from __future__ import annotations

from unsloth_sft.tasks import metrics
from unsloth_sft.tasks.registry import DataSection, Fields, Task, register

DEFAULT_INSTRUCTION = "निम्नलिखित बातचीत का एक वाक्य में सारांश लिखें। (Summarize the following conversation in one sentence.)"


def looks_like_gsm8k(rows: list[dict], columns: dict[str, str]) -> bool:
    """question/answer rows whose answers end in '#### N' are GSM8K-style math (scored by exact match)."""
    sample = [str(r.get(columns["answer"], "")) for r in rows[:20] if isinstance(r, dict)]
    return bool(sample) and all("####" in a for a in sample)


def summarization_prompt(values: Fields, cfg: DataSection) -> str:
    return f"{cfg.instruction or DEFAULT_INSTRUCTION}\n\n{values['dialogue']}"


def instruction_prompt(values: Fields, cfg: DataSection) -> str:
    extra = values.get("input", "")
    return values["instruction"] + (f"\n\n{extra}" if extra.strip() else "")


QUESTION_ALIASES = {"question": ("प्रश्न", "सवाल"), "answer": ("उत्तर", "जवाब")}

register(
    Task(
        "summarization",
        fields=("dialogue", "summary"),
        answer="summary",
        aliases={
            "dialogue": ("dialog", "conversation", "transcript", "संवाद", "वार्तालाप", "बातचीत", "डायलॉग"),
            "summary": ("abstract", "सारांश", "सार", "संक्षेप", "संक्षिप्त", "समरी"),
        },
        detect=20,
        prompt=summarization_prompt,
        loss="the summary + end of turn",
        metrics=metrics.free_text,
        headline="rougeL",
        infer_line='a dialogue: "#Person1#: ...\\n#Person2#: ...", or {"dialogue": "..."}',
        input_label="Dialogue",
        language=("hi", "en"),  # the default instruction is Hindi and English
        tags=("summarization",),
    )
)
register(
    Task(
        "gsm8k",
        fields=("question", "answer"),
        answer="answer",
        aliases=QUESTION_ALIASES,
        detect=45,  # before qa: the same columns, told apart by the answers
        looks_like=looks_like_gsm8k,
        fallback="qa",
        loss="the worked answer + end of turn",
        metrics=metrics.gsm8k_exact_match,
        headline="exact_match",
        infer_line='a question: "Tom has 3 apples ...", or {"question": "..."}',
        input_label="Question",
        tags=("math",),
    )
)
register(
    Task(
        "qa",
        fields=("question", "answer"),
        answer="answer",
        aliases=QUESTION_ALIASES,
        detect=50,
        template="qa",
        metrics=metrics.free_text,
        headline="rougeL",
        infer_line='a question: "What is ...?", or {"question": "..."}',
        input_label="Question",
        tags=("question-answering",),
    )
)
register(
    Task(
        "chat",
        fields=("messages",),
        optional=("tools",),  # the tools a row offers (JSON schemas), for tool_calls in its messages (data/tools.py)
        # ShareGPT rows: [{from: human|gpt|system|tool, value}] (data/rows.py); OpenAI's older exports: functions
        aliases={"messages": ("conversations",), "tools": ("functions",)},
        detect=10,
        shape="messages",
        loss="every assistant turn, tool calls included (or the last: data.last_turn_only); tool results masked",
        metrics=metrics.free_text,
        headline="chrf++",
        infer_line='a user message: "hi", or {"messages": [{"role": "user", "content": "hi"}]}',
        input_label="Your message",
        tags=("conversational",),
    )
)
register(
    Task(
        "instruction",
        fields=("instruction", "output"),
        answer="output",
        optional=("input",),
        detect=30,
        prompt=instruction_prompt,
        template="alpaca",
        metrics=metrics.free_text,
        headline="rougeL",
        infer_line='an instruction: "Name three colours", or {"instruction": "...", "input": "..."}',
        input_label="Instruction",
        tags=("alpaca",),
    )
)
register(
    Task(
        "completion",
        fields=("prompt", "completion"),
        answer="completion",
        detect=40,
        template="plain",
        loss="the completion + EOS",
        metrics=metrics.free_text,
        headline="rougeL",
        infer_line='a prompt: "Once upon", or {"prompt": "..."}',
        input_label="Prompt",
    )
)
register(
    Task(
        "text",
        fields=("text",),
        detect=60,
        shape="blocks",
        template="none",
        loss="every token (blocks of data.block_size tokens)",
        headline="perplexity",
        infer_line='the text to continue: "Once upon a time", or {"text": "..."}',
        input_label="Text to continue",
    )
)
