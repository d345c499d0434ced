"""Tests for unsloth_sft.data (sources, splits, shaping, tokenization with masked prompts) and preview."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest

from tests.conftest import small_config
from unsloth_sft.core.errors import DataError, SFTError
from unsloth_sft.data.examples import load_examples, prepare
from unsloth_sft.data.preview import preview
from unsloth_sft.data.prompts import render_prompt
from unsloth_sft.data.sources import sample_names
from unsloth_sft.tasks.builtin import DEFAULT_INSTRUCTION

SAMPLES = Path(str(resources.files("unsloth_sft") / "samples"))
EOT = "<end_of_turn>"
EOS = "<eos>"


# ---------------------------------------------------------------- helpers


def cfg_for(tmp_path, source, *overrides):
    return small_config(tmp_path, ("data.source", str(source)), *overrides)


def prep(tmp_path, tokenizer, source, *overrides):
    return prepare(cfg_for(tmp_path, source, *overrides), tokenizer)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def qa_rows(n: int, prefix: str = "q") -> list[dict]:
    return [{"question": f"{prefix}{i} what is {i} plus {i}?", "answer": f"It is {2 * i}."} for i in range(n)]


def trained_runs(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """Decoded text of each contiguous run of tokens whose label is not -100."""
    runs, cur = [], []
    for tok, lab in zip(ids, labels):
        if lab != -100:
            assert lab == tok, "a trained label must be the token itself"
            cur.append(tok)
        elif cur:
            runs.append(tokenizer.decode(cur))
            cur = []
    if cur:
        runs.append(tokenizer.decode(cur))
    return runs


def check_example(tokenizer, ids, labels, expected_runs):
    assert len(ids) == len(labels)
    assert ids[0] == tokenizer.bos_token_id, "exactly one BOS, at position 0"
    assert ids.count(tokenizer.bos_token_id) == 1
    assert labels[0] == -100
    assert trained_runs(tokenizer, ids, labels) == expected_runs


def stop_for(template: str) -> str:
    return EOT if template == "chat" else EOS


def completion_text(answer: str, template: str) -> str:
    if template == "chat":
        return answer.strip() + EOT  # Gemma's template trims content
    if template == "qa" and not answer.startswith((" ", "\n")):
        answer = " " + answer
    return answer + EOS


def data_error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, SFTError)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---------------------------------------------------------------- bundled samples

# sample, overrides, task, template, answer column, train file, test file (None: nested json)
SINGLE_TURN = [
    ("hindi-dialogsum", [], "summarization", "chat", "summary"),
    ("gsm8k-mini", ["data.task=gsm8k"], "gsm8k", "chat", "answer"),
    ("qa-json", [], "qa", "qa", "Answer"),
    ("alpaca-mini", [], "instruction", "alpaca", "output"),
    ("prompt-completion", [], "completion", "plain", "completion"),
]


def sample_rows(name: str) -> tuple[list[dict], list[dict]]:
    folder = SAMPLES / name
    if (folder / "train.jsonl").is_file():
        return read_jsonl(folder / "train.jsonl"), read_jsonl(folder / "test.jsonl")
    nested = json.loads((folder / "qa.json").read_text(encoding="utf-8"))
    return nested["train"], nested["test"]


def test_sample_names():
    names = sample_names()
    for name in ("hindi-dialogsum", "gsm8k-mini", "qa-json", "chat", "alpaca-mini", "prompt-completion", "tiny-book"):
        assert name in names


@pytest.mark.parametrize("name, overrides, task, template, answer_col", SINGLE_TURN, ids=[s[0] for s in SINGLE_TURN])
def test_single_turn_sample(tmp_path, tokenizer, name, overrides, task, template, answer_col):
    train_rows, test_rows = sample_rows(name)
    p = prep(tmp_path, tokenizer, f"sample:{name}", *overrides)
    assert (p.task, p.template) == (task, template)
    assert p.skipped == 0 and p.truncated == 0
    # The source's own test split is used (nothing carved from train).
    assert len(p.train) == len(train_rows)
    assert p.test is not None and len(p.test) == len(test_rows)
    for split, rows in ((p.train, train_rows), (p.test, test_rows)):
        for i, row in enumerate(rows):
            ids, labels = split[i]["input_ids"], split[i]["labels"]
            # The trained span is exactly the reference answer and the stop token, once.
            check_example(tokenizer, ids, labels, [completion_text(str(row[answer_col]), template)])
    # Prompt tokens are -100, and they are the same tokens the inference prompt encodes to.
    for i, conv in enumerate(p.train_conversations[:10]):
        ids, labels = p.train[i]["input_ids"], p.train[i]["labels"]
        k = next(j for j, lab in enumerate(labels) if lab != -100)
        n = sum(lab != -100 for lab in labels)
        assert all(lab == -100 for lab in labels[:k]) and all(lab != -100 for lab in labels[k : k + n])
        # After the answer: nothing, or for the chat template the newline after <end_of_turn> (never generated).
        assert tokenizer.decode(ids[k + n :]) == ("\n" if template == "chat" else "")
        prompt, reference = render_prompt(tokenizer, conv, template), conv[-1]["content"]
        assert reference == str(train_rows[i][answer_col])
        assert tokenizer.decode(ids[:k]) == prompt
        assert tokenizer(prompt, add_special_tokens=False).input_ids == ids[:k]


def test_hindi_sample_size_and_prompt(tmp_path, tokenizer):
    train_rows, test_rows = sample_rows("hindi-dialogsum")
    assert len(train_rows) + len(test_rows) >= 80
    p = prep(tmp_path, tokenizer, "sample:hindi-dialogsum")
    assert len(p.train) + len(p.test) >= 80
    user = p.train_conversations[0][0]
    assert user["role"] == "user"
    assert user["content"] == f"{DEFAULT_INSTRUCTION}\n\n{train_rows[0]['dialogue']}"
    assert [m["role"] for m in p.train_conversations[0]] == ["user", "assistant"]


def test_hindi_sample_custom_instruction_and_system_prompt(tmp_path, tokenizer):
    p = prep(
        tmp_path, tokenizer, "sample:hindi-dialogsum", "data.instruction=Summarize.", "data.system_prompt=Be short."
    )
    conv = p.train_conversations[0]
    assert conv[0] == {"role": "system", "content": "Be short."}
    assert conv[1]["content"].startswith("Summarize.\n\n#Person1#")
    text = tokenizer.decode(p.train[0]["input_ids"])
    assert "<start_of_turn>user\nBe short.\n\nSummarize." in text
    train_rows, _ = sample_rows("hindi-dialogsum")
    check_example(tokenizer, p.train[0]["input_ids"], p.train[0]["labels"], [train_rows[0]["summary"] + EOT])


def test_gsm8k_answers_end_with_final_number(tmp_path, tokenizer):
    p = prep(tmp_path, tokenizer, "sample:gsm8k-mini", "data.task=gsm8k")
    for conv in p.test_conversations:
        assert re.search(r"#### -?[\d,.]+$", conv[-1]["content"])


def test_qa_json_uses_nested_test_split(tmp_path, tokenizer):
    nested = json.loads((SAMPLES / "qa-json" / "qa.json").read_text(encoding="utf-8"))
    p = prep(tmp_path, tokenizer, "sample:qa-json")
    assert len(p.test_conversations) == len(nested["test"])
    assert [c[0]["content"] for c in p.test_conversations] == [r["Question"] for r in nested["test"]]
    prompt, ref = render_prompt(tokenizer, p.test_conversations[0], p.template), p.test_conversations[0][-1]["content"]
    assert prompt == f"<bos>Question: {nested['test'][0]['Question']}\nAnswer:"
    assert ref == nested["test"][0]["Answer"]


def test_alpaca_input_is_appended_to_instruction(tmp_path, tokenizer):
    train_rows, _ = sample_rows("alpaca-mini")
    p = prep(tmp_path, tokenizer, "sample:alpaca-mini")
    for row, conv in zip(train_rows, p.train_conversations):
        expected = row["instruction"] + (f"\n\n{row['input']}" if row.get("input", "").strip() else "")
        assert conv[0]["content"] == expected


def test_chat_sample_every_assistant_turn(tmp_path, tokenizer):
    train_rows, test_rows = sample_rows("chat")
    p = prep(tmp_path, tokenizer, "sample:chat")
    assert (p.task, p.template) == ("chat", "chat")
    assert len(p.train) == len(train_rows) and len(p.test) == len(test_rows)
    multi = 0
    for i, row in enumerate(train_rows):
        answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        multi += len(answers) > 1
        check_example(tokenizer, p.train[i]["input_ids"], p.train[i]["labels"], [a.strip() + EOT for a in answers])
        text = tokenizer.decode(p.train[i]["input_ids"])
        assert "<start_of_turn>system" not in text
    assert multi >= 1, "the chat sample should have multi-turn conversations"


def test_chat_sample_last_turn_only(tmp_path, tokenizer):
    train_rows, _ = sample_rows("chat")
    p = prep(tmp_path, tokenizer, "sample:chat", "data.last_turn_only=true")
    full = prep(tmp_path, tokenizer, "sample:chat")
    for i, row in enumerate(train_rows):
        last = [m["content"] for m in row["messages"] if m["role"] == "assistant"][-1]
        check_example(tokenizer, p.train[i]["input_ids"], p.train[i]["labels"], [last.strip() + EOT])
        assert p.train[i]["input_ids"] == full.train[i]["input_ids"]  # same text, fewer trained tokens


def test_train_on_everything(tmp_path, tokenizer):
    p = prep(tmp_path, tokenizer, "sample:qa-json", "data.train_on_completions_only=false")
    for row in p.train:
        assert row["labels"] == row["input_ids"]


def test_tiny_book_blocks(tmp_path, tokenizer):
    p = prep(tmp_path, tokenizer, "sample:tiny-book", "data.block_size=64")
    assert (p.task, p.template) == ("text", "none")
    assert len(p.train) > 5 and p.test is not None and len(p.test) >= 1
    for split in (p.train, p.test):
        for row in split:
            assert len(row["input_ids"]) == 64
            assert row["labels"] == row["input_ids"]
    book = (SAMPLES / "tiny-book" / "book.txt").read_text(encoding="utf-8")
    all_ids = list(p.train["input_ids"]) + list(p.test["input_ids"])
    expected = [tokenizer.bos_token_id] + tokenizer(book, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    n_blocks = len(expected) // 64
    assert len(all_ids) == n_blocks
    assert sorted(all_ids) == sorted(expected[i * 64 : (i + 1) * 64] for i in range(n_blocks))


def test_tiny_book_default_block_size(tmp_path, tokenizer):
    p = prep(tmp_path, tokenizer, "sample:tiny-book")
    assert {len(r) for r in p.train["input_ids"]} == {128}


def test_text_shorter_than_a_block(tmp_path, tokenizer):
    path = tmp_path / "short.txt"
    path.write_text("just a few words", encoding="utf-8")
    assert "block_size" in data_error(prep, tmp_path, tokenizer, path)


# ---------------------------------------------------------------- local files


def check_qa(p, tokenizer, rows_by_question: dict[str, dict]):
    assert (p.task, p.template) == ("qa", "qa")
    for i, conv in enumerate(p.train_conversations):
        row = rows_by_question[conv[0]["content"]]
        assert conv[-1]["content"] == row["answer"]
        check_example(tokenizer, p.train[i]["input_ids"], p.train[i]["labels"], [completion_text(row["answer"], "qa")])


def test_local_jsonl(tmp_path, tokenizer):
    rows = qa_rows(10)
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    p = prep(tmp_path, tokenizer, path, "data.test_size=0")
    assert len(p.train) == 10 and p.test is None
    check_qa(p, tokenizer, {r["question"]: r for r in rows})


def test_local_json_list(tmp_path, tokenizer):
    rows = qa_rows(10)
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    p = prep(tmp_path, tokenizer, path, "data.test_size=2")
    assert len(p.train) == 8 and len(p.test) == 2
    check_qa(p, tokenizer, {r["question"]: r for r in rows})


def test_local_nested_json(tmp_path, tokenizer):
    train, test = qa_rows(6), qa_rows(3, prefix="t")
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"train": train, "test": test}), encoding="utf-8")
    p = prep(tmp_path, tokenizer, path)
    assert len(p.train) == 6 and len(p.test) == 3
    assert [c[0]["content"] for c in p.test_conversations] == [r["question"] for r in test]
    check_qa(p, tokenizer, {r["question"]: r for r in train})


def test_local_csv_with_hindi_headers(tmp_path, tokenizer):
    rows = [
        ("#Person1#: नमस्ते, मेरा ऑर्डर कहाँ है?\n#Person2#: कल पहुँचेगा।", "ग्राहक ने ऑर्डर के बारे में पूछा।"),
        ("#Person1#: बिल गलत है।\n#Person2#: मैं ठीक कर देता हूँ।", "बिल ठीक किया गया।"),
        ("#Person1#: टिकट रद्द करें।\n#Person2#: हो गया।", "टिकट रद्द हुआ।"),
        ("#Person1#: पासवर्ड भूल गया।\n#Person2#: लिंक भेजा है।", "पासवर्ड रीसेट लिंक भेजा गया।"),
    ]
    import csv

    path = tmp_path / "hi.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["संवाद", "सारांश"])
        writer.writerows(rows)
    p = prep(tmp_path, tokenizer, path, "data.columns={dialogue: संवाद, summary: सारांश}", "data.test_size=1")
    assert (p.task, p.template) == ("summarization", "chat")
    assert len(p.train) == 3 and len(p.test) == 1
    by_summary = dict((s, d) for d, s in rows)
    for i, conv in enumerate(p.train_conversations):
        summary = conv[-1]["content"]
        assert conv[0]["content"].endswith(by_summary[summary])  # the multi-line dialogue, intact
        check_example(tokenizer, p.train[i]["input_ids"], p.train[i]["labels"], [summary + EOT])


def test_local_parquet(tmp_path, tokenizer):
    import pandas as pd

    rows = [{"instruction": f"Repeat {i}.", "input": "", "output": f"{i} {i}"} for i in range(6)]
    path = tmp_path / "d.parquet"
    pd.DataFrame(rows).to_parquet(path)
    p = prep(tmp_path, tokenizer, path, "data.test_size=0")
    assert (p.task, p.template) == ("instruction", "alpaca")
    assert [c[-1]["content"] for c in p.train_conversations] == [r["output"] for r in rows]
    for i, row in enumerate(rows):
        check_example(tokenizer, p.train[i]["input_ids"], p.train[i]["labels"], [row["output"] + EOS])


def test_local_txt(tmp_path, tokenizer):
    path = tmp_path / "book.txt"
    path.write_text(("The river bent twice before it reached the sea. " * 40).strip(), encoding="utf-8")
    p = prep(tmp_path, tokenizer, path, "data.block_size=32")
    assert p.task == "text"
    assert all(len(r) == 32 for r in p.train["input_ids"])
    assert all(row["labels"] == row["input_ids"] for row in p.train)


def test_local_folder_train_and_test(tmp_path, tokenizer):
    folder = tmp_path / "ds"
    folder.mkdir()
    train, test = qa_rows(5), qa_rows(2, prefix="t")
    write_jsonl(folder / "train.jsonl", train)
    write_jsonl(folder / "test.jsonl", test)
    p = prep(tmp_path, tokenizer, folder)
    assert [c[0]["content"] for c in p.train_conversations] == [r["question"] for r in train]
    assert [c[0]["content"] for c in p.test_conversations] == [r["question"] for r in test]


def test_local_folder_extra_file_does_not_replace_train(tmp_path, tokenizer):
    folder = tmp_path / "ds"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", qa_rows(5))
    write_jsonl(folder / "test.jsonl", qa_rows(2, prefix="t"))
    write_jsonl(folder / "val.jsonl", qa_rows(3, prefix="v"))
    p = prep(tmp_path, tokenizer, folder)
    assert [c[0]["content"] for c in p.train_conversations] == [r["question"] for r in qa_rows(5)]


def test_columns_are_matched_case_blind(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"QUESTION": f"q{i}", "Answer": f"a{i}"} for i in range(4)])
    p = prep(tmp_path, tokenizer, path, "data.test_size=0")
    assert p.task == "qa" and p.train_conversations[0][-1]["content"] == "a0"


def test_numeric_answers_in_json_become_text(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": f"{i} + {i}?", "answer": 2 * i} for i in range(1, 5)])
    p = prep(tmp_path, tokenizer, path, "data.test_size=0")
    assert [c[-1]["content"] for c in p.train_conversations] == ["2", "4", "6", "8"]


def test_csv_values_are_kept_as_written(tmp_path, tokenizer):
    path = tmp_path / "d.csv"
    path.write_text("question,answer\nq1,42\nq2,\nq3,007\nq4,None\nq5,NA\n", encoding="utf-8")
    p = prep(tmp_path, tokenizer, path, "data.test_size=0")
    assert [c[-1]["content"] for c in p.train_conversations] == ["42", "007", "None", "NA"]
    assert p.skipped == 1


# ---------------------------------------------------------------- test split, seed, max_samples


def questions(p) -> list[str]:
    return [c[0]["content"] for c in p.train_conversations]


def test_test_split_carved_by_fraction(tmp_path, tokenizer):
    rows = qa_rows(20)
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    p = prep(tmp_path, tokenizer, path, "data.test_size=0.25")
    assert len(p.train) == 15 and len(p.test) == 5
    train_q, test_q = set(questions(p)), {c[0]["content"] for c in p.test_conversations}
    assert not train_q & test_q
    assert train_q | test_q == {r["question"] for r in rows}


def test_test_split_carved_by_count(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", qa_rows(20))
    p = prep(tmp_path, tokenizer, path, "data.test_size=3")
    assert len(p.train) == 17 and len(p.test) == 3


def test_test_size_zero_means_no_test(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", qa_rows(20))
    p = prep(tmp_path, tokenizer, path, "data.test_size=0")
    assert len(p.train) == 20 and p.test is None


def test_test_size_larger_than_the_data(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", qa_rows(5))
    assert "data.test_size" in data_error(prep, tmp_path, tokenizer, path, "data.test_size=50")


def test_carve_is_deterministic_for_the_seed(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", qa_rows(30))
    a = prep(tmp_path, tokenizer, path, "data.test_size=0.2", "train.seed=1")
    b = prep(tmp_path, tokenizer, path, "data.test_size=0.2", "train.seed=1")
    c = prep(tmp_path, tokenizer, path, "data.test_size=0.2", "train.seed=2")
    assert a.train_conversations == b.train_conversations and a.test_conversations == b.test_conversations
    assert a.train["input_ids"] == b.train["input_ids"]
    assert {q[0]["content"] for q in a.test_conversations} != {q[0]["content"] for q in c.test_conversations}


def test_max_samples_caps_train_only(tmp_path, tokenizer):
    p = prep(tmp_path, tokenizer, "sample:qa-json", "data.max_samples=4")
    full = prep(tmp_path, tokenizer, "sample:qa-json")
    assert len(p.train) == 4
    assert len(p.test) == len(full.test)
    assert p.train_conversations == full.train_conversations[:4]


def test_explicit_splits(tmp_path, tokenizer):
    p = prep(tmp_path, tokenizer, "sample:qa-json", "data.split=test", "data.test_split=train")
    full = prep(tmp_path, tokenizer, "sample:qa-json")
    assert p.train_conversations == full.test_conversations
    assert p.test_conversations == full.train_conversations


def test_unknown_split(tmp_path, tokenizer):
    msg = data_error(prep, tmp_path, tokenizer, "sample:qa-json", "data.split=dev")
    assert "dev" in msg and "train" in msg and "test" in msg
    msg = data_error(prep, tmp_path, tokenizer, "sample:qa-json", "data.test_split=dev")
    assert "data.test_split" in msg


# ---------------------------------------------------------------- bad inputs


@pytest.fixture
def bad(tmp_path, tokenizer):
    """Run prepare on a source that must fail; check the message and that nothing was written."""

    def run(source, *overrides) -> str:
        before = listing(tmp_path)
        msg = data_error(prep, tmp_path, tokenizer, source, *overrides)
        assert listing(tmp_path) == before, "a failing prepare wrote into the folder"
        return msg

    return run


def test_malformed_jsonl_line(tmp_path, bad):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps(r) for r in qa_rows(3)] + ['{"question": "x", "answer": }'] + [json.dumps(qa_rows(1)[0])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    msg = bad(path)
    assert str(path) in msg and "line 4" in msg and "invalid JSON" in msg


def test_malformed_jsonl_line_counts_blank_lines(tmp_path, bad):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(qa_rows(1)[0]) + "\n\n{oops\n", encoding="utf-8")
    assert "line 3" in bad(path)


def test_truncated_json(tmp_path, bad):
    path = tmp_path / "d.json"
    text = json.dumps(qa_rows(10), indent=2)
    path.write_text(text[: len(text) // 2], encoding="utf-8")
    msg = bad(path)
    assert str(path) in msg and re.search(r"line \d+", msg) and "truncated" in msg


@pytest.mark.parametrize("name, content", [("e.jsonl", ""), ("e.json", "  \n"), ("e.csv", ""), ("e.txt", "\n\n")])
def test_empty_file(tmp_path, bad, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    msg = bad(path)
    assert str(path) in msg and "empty" in msg


def test_missing_column(tmp_path, bad):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "x", "reply": "y"}] * 3)
    msg = bad(path, "data.task=qa")
    assert str(path) in msg
    assert "'answer'" in msg and "question, reply" in msg and "data.columns.answer" in msg


def test_missing_column_named_in_data_columns(tmp_path, bad):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "x", "answer": "y"}] * 3)
    msg = bad(path, "data.columns={answer: उत्तर}")
    assert "'उत्तर'" in msg and "question, answer" in msg and "data.columns.answer" in msg


def test_missing_field_in_a_later_row(tmp_path, bad):
    path = write_jsonl(tmp_path / "d.jsonl", [*qa_rows(2), {"question": "only"}])
    msg = bad(path, "data.test_size=0")
    assert str(path) in msg and "line 3" in msg and "'answer'" in msg


def test_cannot_tell_task(tmp_path, bad):
    path = write_jsonl(tmp_path / "d.jsonl", [{"foo": "x", "bar": "y"}] * 3)
    msg = bad(path)
    assert "foo, bar" in msg and "data.task" in msg


def test_non_utf8_jsonl(tmp_path, bad):
    path = tmp_path / "d.jsonl"
    body = "".join(json.dumps(r) + "\n" for r in qa_rows(2)).encode() + b'{"question": "caf\xe9", "answer": "x"}\n'
    path.write_bytes(body)
    msg = bad(path)
    assert str(path) in msg and "line 3" in msg and "UTF-8" in msg


def test_non_utf8_csv(tmp_path, bad):
    path = tmp_path / "d.csv"
    path.write_bytes("question,answer\nq,a\nq2,caf\xe9\n".encode("latin-1"))
    msg = bad(path)
    assert str(path) in msg and "line 3" in msg and "UTF-8" in msg


def test_utf8_bom_is_accepted(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in qa_rows(3)).encode())
    p = prep(tmp_path, tokenizer, path, "data.test_size=0")
    assert len(p.train) == 3


def chat_row(*messages) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in messages]}


def test_messages_unknown_role(tmp_path, bad):
    path = write_jsonl(
        tmp_path / "d.jsonl", [chat_row(("user", "hi"), ("assistant", "yo")), chat_row(("user", "hi"), ("bot", "yo"))]
    )
    msg = bad(path, "data.test_size=0")
    assert str(path) in msg and "line 2" in msg and "messages[1].role" in msg and "'bot'" in msg


def test_messages_content_not_a_string(tmp_path, bad):
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 5}]}
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    msg = bad(path)
    assert str(path) in msg and "line 1" in msg and "messages[1].content" in msg


def test_messages_not_a_list(tmp_path, bad):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": "hello"}])
    msg = bad(path, "data.task=chat")
    assert str(path) in msg and "line 1" in msg and "'messages'" in msg


def test_messages_missing_role(tmp_path, bad):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"content": "hi"}]}])
    msg = bad(path, "data.task=chat")
    assert "line 1" in msg and "messages[0]" in msg and "role" in msg


def test_row_not_an_object(tmp_path, bad):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(qa_rows(1)[0]) + "\n[1, 2]\n", encoding="utf-8")
    msg = bad(path, "data.test_size=0")
    assert str(path) in msg and "line 2" in msg


def test_column_of_wrong_type(tmp_path, bad):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": ["a", "b"], "answer": "x"}])
    msg = bad(path)
    assert "line 1" in msg and "'question'" in msg


def test_empty_answer_is_skipped_and_counted(tmp_path, tokenizer):
    rows = [
        qa_rows(1)[0],
        {"question": "x", "answer": ""},
        qa_rows(2)[1],
        {"question": "y", "answer": "  "},
        {"question": "z", "answer": None},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    p = prep(tmp_path, tokenizer, path, "data.test_size=0")
    assert len(p.train) == 2 and p.skipped == 3
    assert [c[0]["content"] for c in p.train_conversations] == [rows[0]["question"], rows[2]["question"]]


def test_empty_answer_counted_in_test_split(tmp_path, tokenizer):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"train": qa_rows(3), "test": [*qa_rows(1), {"question": "z", "answer": ""}]}))
    p = prep(tmp_path, tokenizer, path)
    assert len(p.test) == 1 and p.skipped == 1


def test_chat_row_without_an_assistant_answer_is_skipped(tmp_path, tokenizer):
    rows = [chat_row(("user", "hi"), ("assistant", "hello")), chat_row(("user", "hi"), ("assistant", " "))]
    p = prep(tmp_path, tokenizer, write_jsonl(tmp_path / "d.jsonl", rows), "data.test_size=0")
    assert len(p.train) == 1 and p.skipped == 1


def test_empty_answer_is_an_error_without_skip_empty(tmp_path, bad):
    path = write_jsonl(tmp_path / "d.jsonl", [qa_rows(1)[0], {"question": "x", "answer": ""}])
    msg = bad(path, "data.test_size=0", "data.skip_empty=false")
    assert str(path) in msg and "line 2" in msg and "data.skip_empty" in msg


def test_every_row_empty(tmp_path, bad):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": f"x{i}", "answer": ""} for i in range(4)])
    msg = bad(path, "data.test_size=0")
    assert str(path) in msg and "skipped" in msg and "4" in msg


def test_unknown_sample(bad):
    msg = bad("sample:nope")
    assert "sample:nope" in msg
    for name in sample_names():
        assert f"sample:{name}" in msg


@pytest.mark.parametrize("name", ["missing.jsonl", "missing.csv", "sub/missing.json"])
def test_path_that_does_not_exist(tmp_path, bad, name):
    path = tmp_path / name
    msg = bad(path)
    assert str(path) in msg and "not found" in msg


def test_relative_path_that_does_not_exist(bad):
    msg = bad("./no/such/data")
    assert "./no/such/data" in msg and "not found" in msg


def test_unsupported_suffix(tmp_path, bad):
    path = tmp_path / "d.xlsx"
    path.write_text("x", encoding="utf-8")
    msg = bad(path)
    assert str(path) in msg and ".xlsx" in msg


def test_folder_without_data_files(tmp_path, bad):
    folder = tmp_path / "empty_ds"
    folder.mkdir()
    (folder / "README.md").write_text("nothing", encoding="utf-8")
    msg = bad(folder)
    assert str(folder) in msg


def test_json_scalar(tmp_path, bad):
    path = tmp_path / "d.json"
    path.write_text("42", encoding="utf-8")
    msg = bad(path)
    assert str(path) in msg and "list of records" in msg


# ---------------------------------------------------------------- truncation and preview


def test_truncation_is_counted(tmp_path, tokenizer):
    """320 tokens cuts the longer Hindi examples but leaves the shorter ones' summaries to learn from."""
    p = prep(tmp_path, tokenizer, "sample:hindi-dialogsum", "model.max_seq_length=320")
    assert p.truncated > 0
    assert all(len(r) <= 320 for r in p.train["input_ids"])
    full = prep(tmp_path, tokenizer, "sample:hindi-dialogsum")
    assert p.truncated == sum(len(r) > 320 for r in full.train["input_ids"])


def test_preview_marks_trained_span(tmp_path, tokenizer):
    cfg = cfg_for(tmp_path, "sample:qa-json")
    out = preview(cfg, n=2, tokenizer=tokenizer)
    assert "task: qa | template: qa" in out
    assert "--- example 1" in out and "--- example 2" in out and "--- example 3" not in out
    p = prepare(cfg, tokenizer)
    first = p.train_conversations[0]
    assert f"Question: {first[0]['content']}\nAnswer:[[ {first[1]['content']}<eos>]]" in out
    m = re.search(r"(\d+) of (\d+) examples cut at max_seq_length 768", out)
    assert m and (int(m.group(1)), int(m.group(2))) == (0, len(p.train))
    assert f"<bos>: opens {len(p.train)} of {len(p.train)} examples, never twice" in out


def test_preview_reports_truncation(tmp_path, tokenizer):
    cfg = cfg_for(tmp_path, "sample:hindi-dialogsum", "model.max_seq_length=320")
    out = preview(cfg, n=2, tokenizer=tokenizer)
    m = re.search(r"(\d+) of (\d+) examples cut at max_seq_length 320", out)
    assert m, out[:500]
    p = prepare(cfg, tokenizer)
    assert int(m.group(1)) == p.truncated > 0
    assert int(m.group(2)) == len(p.train)


def test_preview_of_chat_shows_each_turn_marked(tmp_path, tokenizer):
    out = preview(cfg_for(tmp_path, "sample:chat"), n=3, tokenizer=tokenizer)
    assert out.count("[[") == out.count("]]") >= 3
    assert re.search(r"<start_of_turn>model\n\[\[[^\]]+<end_of_turn>\]\]", out)


def test_tokenized_rows_are_cached_and_keyed_on_what_decides_them(tmp_path, tokenizer, monkeypatch):
    """A second prepare reads the cache (same rows); another max_seq_length or template makes a new entry."""
    monkeypatch.setenv("UNSLOTH_SFT_CACHE", str(tmp_path / "cache"))
    cfg = small_config(tmp_path, "data.source=sample:chat")
    first = prepare(cfg, tokenizer)
    entries = sorted((tmp_path / "cache" / "tokenized").iterdir())
    assert len(entries) == 2  # train and test
    again = prepare(cfg, tokenizer)
    assert again.train["input_ids"] == first.train["input_ids"] and again.train["labels"] == first.train["labels"]
    assert sorted((tmp_path / "cache" / "tokenized").iterdir()) == entries
    prepare(small_config(tmp_path, "data.source=sample:chat", "model.max_seq_length=700"), tokenizer)
    prepare(small_config(tmp_path, "data.source=sample:chat", "data.last_turn_only=true"), tokenizer)
    assert len(list((tmp_path / "cache" / "tokenized").iterdir())) == 6
    uncached = prepare(small_config(tmp_path, "data.source=sample:chat", "data.cache_tokenized=false"), tokenizer)
    assert uncached.train["labels"] == first.train["labels"]


def test_inference_detects_the_task_training_detects(tmp_path):
    """infer.recipe_task goes through the same detection as training: GSM8K rows are gsm8k, not plain qa."""
    from unsloth_sft.evaluation.infer import recipe_task

    for source in ("sample:gsm8k-mini", "sample:qa-json", "sample:chat"):
        cfg = small_config(tmp_path, f"data.source={source}")
        assert recipe_task(cfg) == load_examples(cfg).task
    assert recipe_task(small_config(tmp_path, "data.source=sample:gsm8k-mini")) == "gsm8k"


def test_tokenizing_a_big_dataset_says_how_far_it_is(tokenizer, capsys, monkeypatch):
    """From data/tokenize.PROGRESS_ROWS conversations a progress line (a bar on a terminal) per chunk; the rows are
    those of one batch; a small dataset prints nothing."""
    from unsloth_sft.config.data import DataConfig
    from unsloth_sft.data import tokenize as T

    convs = [[{"role": "user", "content": f"q{i}?"}, {"role": "assistant", "content": f"a{i}."}] for i in range(7)]
    monkeypatch.setenv("UNSLOTH_SFT_PROGRESS_S", "0")
    whole = T.tokenize(tokenizer, convs, "chat", DataConfig(), 12)
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(T, "PROGRESS_ROWS", 5)
    monkeypatch.setattr(T, "CHUNK", 3)
    assert T.tokenize(tokenizer, convs, "chat", DataConfig(), 12) == whole and whole[1] > 0  # some cut at 12
    lines = [line.split(" |")[0] for line in capsys.readouterr().out.splitlines()]
    assert lines == [f"tokenize: {n}/7 conversations ({p}%)" for n, p in ((3, 43), (6, 86), (7, 100))]
