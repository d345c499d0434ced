"""Every way a user can get it wrong at the CLI: exit 2, one line naming the problem and the fix, nothing written."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "params" / "demo-cpu.yaml"
FAST = [
    "--set",
    "model.load_in_4bit=false",
    "--set",
    "train.max_steps=2",
    "--set",
    "train.optim=adamw_torch",
    "--set",
    "export.save_methods=[lora]",
    "--set",
    "model.backend=transformers",
]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with a hash of its bytes: the before/after picture of a failed command."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_cli(capsys, *args: str) -> tuple[int, str]:
    from unsloth_sft.app.cli import main

    code = main(list(args))
    err = capsys.readouterr().err.strip()
    return code, err


def assert_bad(capsys, tmp_path: Path, args: list[str], *expected: str) -> str:
    """The command exits 2 with one `unsloth-sft: error:` line containing `expected`, and tmp_path is unchanged."""
    before = snapshot(tmp_path)
    code, err = run_cli(capsys, *args)
    lines = [line for line in err.splitlines() if line.startswith("unsloth-sft: error:")]
    assert code == 2, err[-2000:]
    assert len(lines) == 1, err[-2000:]
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], lines[0]
    assert snapshot(tmp_path) == before
    return lines[0]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def out(tmp_path: Path) -> list[str]:
    return ["--set", f"output_dir={tmp_path / 'runs'}", *FAST]


def fake_run(folder: Path, *overrides: str, checkpoint: int | None = None) -> Path:
    """A run folder as training leaves it (config.yaml, an adapter config, optionally a checkpoint), no weights."""
    from unsloth_sft.config.load import load_config, save_config

    folder.mkdir(parents=True)
    save_config(load_config(DEMO, [f"output_dir={folder.parent}", *overrides]), folder / "config.yaml")
    write(folder / "adapter" / "adapter_config.json", json.dumps({"base_model_name_or_path": "tiny-gemma2"}))
    if checkpoint is not None:
        write(
            folder / "checkpoints" / f"checkpoint-{checkpoint}" / "trainer_state.json",
            json.dumps({"global_step": checkpoint}),
        )
    return folder


# ---------------------------------------------------------------- params


@pytest.mark.parametrize(
    "text, expected",
    [
        ("model: [unclosed\n", ["line 2", "fix the YAML syntax"]),
        ("- a\n- b\n", ["expected a mapping of sections"]),
        ("trian:\n  max_steps: 5\n", ["unknown key 'trian'", "did you mean 'train'"]),
        ("train:\n  max_step: 5\n", ["unknown key 'train.max_step'", "did you mean 'max_steps'"]),
        ("lora:\n  rank: 8\n", ["unknown key 'lora.rank'"]),
        ("train:\n  max_steps: ten\n", ["train.max_steps", "expected an integer", "'ten'"]),
        ("train:\n  max_steps: 1.5\n", ["train.max_steps", "1.5"]),
        ("train:\n  per_device_train_batch_size: -1\n", ["per_device_train_batch_size must be >= 1"]),
        ("train:\n  max_steps: null\n", ["max_steps and train.num_train_epochs are both unset"]),
        ("lora:\n  r: 0\n", ["lora.r must be >= 1"]),
        ("finetune: qlora\nmodel:\n  load_in_4bit: false\n", ["qlora needs model.load_in_4bit: true"]),
        ("finetune: full\n", ["cannot train 4-bit weights"]),
        (
            "data:\n  task: text\n  block_size: 4096\nmodel:\n  max_seq_length: 512\ntrain:\n  packing: true\n",
            ["block_size 4096 is larger than model.max_seq_length 512"],
        ),
        ("model: 5\n", ["model", "expected a mapping"]),
    ],
)
def test_bad_params_file(capsys, tmp_path, text, expected):
    params = write(tmp_path / "p.yaml", text)
    assert_bad(capsys, tmp_path, ["train", str(params)], str(params), *expected)


def test_params_problems_outside_the_file(capsys, tmp_path):
    assert_bad(capsys, tmp_path, ["train", str(tmp_path / "missing.yaml")], "missing.yaml", "not found")
    latin1 = write(tmp_path / "l.yaml", "run_name: caf\xe9\n".encode("latin-1"))
    assert_bad(capsys, tmp_path, ["train", str(latin1)], "not UTF-8")
    assert_bad(capsys, tmp_path, ["train", str(DEMO), "--set", "train.max_steps"], "expected KEY=VALUE")
    assert_bad(capsys, tmp_path, ["train", str(DEMO), "--set", "data.test_size=-1"], "data.test_size must be >= 0")


# ---------------------------------------------------------------- model


def test_bad_model(capsys, tmp_path):
    args = ["train", str(DEMO), *out(tmp_path)]
    assert_bad(capsys, tmp_path, [*args, "--set", f"model.name={tmp_path / 'nope'}"], "model.name", "no such folder")
    (tmp_path / "notamodel").mkdir()
    write(tmp_path / "notamodel" / "weights.txt", "x")
    assert_bad(capsys, tmp_path, [*args, "--set", f"model.name={tmp_path / 'notamodel'}"], "no config.json")
    assert_bad(
        capsys,
        tmp_path,
        [*args, "--set", "lora.target_modules=[q_proj,query_key_value]"],
        "query_key_value",
        "its linear layers are:",
        "gate_proj",
    )
    assert_bad(
        capsys, tmp_path, [*args, "--set", "model.max_seq_length=32"], "max_seq_length 32", "raise model.max_seq_length"
    )


def test_recipe_needs_a_chat_template_the_model_lacks(capsys, tmp_path, tiny_path):
    import shutil

    plain = tmp_path / "plain-model"
    shutil.copytree(tiny_path, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    write(plain / "tokenizer_config.json", json.dumps(cfg))
    assert_bad(
        capsys,
        tmp_path,
        ["train", str(DEMO), *out(tmp_path), "--set", f"model.name={plain}", "--set", "data.template=chat"],
        "no chat template",
        "qa, alpaca or plain",
    )


# ---------------------------------------------------------------- data


@pytest.mark.parametrize(
    "name, content, expected",
    [
        (
            "bad.jsonl",
            '{"dialogue": "a", "summary": "b"}\n{"dialogue": "c", "summary": \n',
            ["bad.jsonl line 2", "invalid JSON"],
        ),
        ("cut.json", '[{"dialogue": "a", "summary": "b"}, {"dialogue": "c"', ["cut.json line 1", "truncated"]),
        ("empty.jsonl", "", ["empty.jsonl", "the file is empty"]),
        (
            "cols.jsonl",
            '{"text_a": "a", "text_b": "b"}\n',
            ["cols.jsonl", "columns are: text_a, text_b", "data.columns.dialogue"],
        ),
        (
            "latin.jsonl",
            b'{"dialogue": "a", "summary": "b"}\n{"dialogue": "caf\xe9", "summary": "x"}\n',
            ["latin.jsonl line 2", "not UTF-8"],
        ),
        (
            "empty-answers.jsonl",
            '{"dialogue": "a", "summary": ""}\n{"dialogue": "b", "summary": " "}\n',
            ["every training row was skipped"],
        ),
        ("odd.txt.gz", "x", ["unsupported file type"]),
    ],
)
def test_bad_data_file(capsys, tmp_path, name, content, expected):
    data = write(tmp_path / "data" / name, content)
    assert_bad(capsys, tmp_path, ["train", str(DEMO), *out(tmp_path), "--set", f"data.source={data}"], *expected)


def test_bad_chat_rows(capsys, tmp_path):
    role = write(tmp_path / "role.jsonl", json.dumps({"messages": [{"role": "bot", "content": "hi"}]}) + "\n")
    assert_bad(
        capsys,
        tmp_path,
        ["train", str(DEMO), *out(tmp_path), "--set", f"data.source={role}", "--set", "data.task=chat"],
        "role.jsonl line 1",
        "messages[0].role 'bot'",
    )
    typed = write(tmp_path / "typed.jsonl", json.dumps({"messages": [{"role": "user", "content": ["a"]}]}) + "\n")
    assert_bad(
        capsys,
        tmp_path,
        ["train", str(DEMO), *out(tmp_path), "--set", f"data.source={typed}", "--set", "data.task=chat"],
        "typed.jsonl line 1",
        "content must be text",
    )


def test_bad_sources(capsys, tmp_path):
    args = ["train", str(DEMO), *out(tmp_path)]
    assert_bad(
        capsys, tmp_path, [*args, "--set", "data.source=sample:klingon"], "no bundled sample", "sample:hindi-dialogsum"
    )
    assert_bad(
        capsys, tmp_path, [*args, "--set", f"data.source={tmp_path / 'gone.jsonl'}"], "gone.jsonl", "file not found"
    )
    assert_bad(
        capsys,
        tmp_path,
        [*args, "--set", "data.source=someone/some-dataset"],
        "someone/some-dataset",
        "Hugging Face Hub",
    )


def test_eval_needs_a_test_split(capsys, tmp_path):
    rows = "".join(json.dumps({"dialogue": f"d{i}", "summary": f"s{i}"}) + "\n" for i in range(6))
    data = write(tmp_path / "d.jsonl", rows)
    fake_run(tmp_path / "runs" / "demo")
    assert_bad(
        capsys,
        tmp_path,
        ["eval", str(DEMO), *out(tmp_path), "--set", f"data.source={data}", "--set", "data.test_size=0"],
        "test split is empty",
        "data.test_size",
    )


def test_infer_bad_input(capsys, tmp_path):
    assert_bad(
        capsys,
        tmp_path,
        [
            "infer",
            "--model",
            "tiny-gemma2",
            "--input",
            str(tmp_path / "none.jsonl"),
            "--output",
            str(tmp_path / "o.jsonl"),
        ],
        "input file not found",
    )
    assert_bad(
        capsys,
        tmp_path,
        [
            "infer",
            "--model",
            "tiny-gemma2",
            "--adapter",
            str(tmp_path),
            "--input",
            str(DEMO),
            "--output",
            str(tmp_path / "o.jsonl"),
        ],
        "not a LoRA adapter folder",
    )


def test_data_file_given_as_params(capsys, tmp_path):
    data = write(tmp_path / "mine.jsonl", json.dumps({"dialogue": "a", "summary": "b"}) + "\n")
    assert_bad(
        capsys, tmp_path, ["train", str(data)], "looks like a data file", f"--set data.source={data}", "-p dataset"
    )


def test_data_columns_keys_are_fields(capsys, tmp_path):
    line = assert_bad(
        capsys,
        tmp_path,
        ["train", str(DEMO), *out(tmp_path), "--set", "data.columns.Conversation=dialogue"],
        "data.columns.Conversation",
        "did you mean data.columns.dialogue: Conversation",
        "fields: ",
    )
    assert "summary" in line and "messages" in line


def test_recipe_on_another_data_shape_names_data_task(capsys, tmp_path):
    """The demo recipe (task: summarization) on question/answer rows: the fix is data.task, not data.columns."""
    rows = "".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) + "\n" for i in range(6))
    data = write(tmp_path / "qa.jsonl", rows)
    assert_bad(
        capsys,
        tmp_path,
        ["train", str(DEMO), *out(tmp_path), "--set", f"data.source={data}"],
        "look like a qa dataset",
        "--set data.task=qa",
    )


def test_hindi_headers_are_detected(tmp_path):
    from unsloth_sft.config.load import load_config
    from unsloth_sft.data.examples import load_examples

    rows = "".join(
        json.dumps({"वार्तालाप": f"#Person1#: नमस्ते {i}", "सार": f"नमस्ते {i}"}, ensure_ascii=False) + "\n"
        for i in range(6)
    )
    data = write(tmp_path / "hi.jsonl", rows)
    examples = load_examples(load_config(None, [f"data.source={data}"]))
    assert examples.task == "summarization" and examples.train_conversations[0][-1]["content"].startswith("नमस्ते")


def test_raw_text_too_short_to_train_says_where_blocks_went(capsys, tmp_path):
    book = write(tmp_path / "short.txt", "The river bent twice before it reached the sea. " * 12)
    assert_bad(
        capsys,
        tmp_path,
        [
            "train",
            str(ROOT / "params/cpu/raw-text.yaml"),
            *out(tmp_path),
            "--set",
            f"data.source={book}",
            "--set",
            "data.block_size=32",
        ],
        "blocks of 32 tokens",
        "for test and",
        "to train on (fewer than 8)",
    )


# ---------------------------------------------------------------- run folders


def test_resume_with_another_config(capsys, tmp_path):
    """Defect 1: same run_name, other data: exit 2 naming the keys and both ways out; nothing resumed or written."""
    fake_run(tmp_path / "runs" / "demo", *FAST[1::2], checkpoint=2)
    line = assert_bad(
        capsys,
        tmp_path,
        ["train", str(DEMO), *out(tmp_path), "--set", "data.source=sample:chat", "--set", "train.learning_rate=0.001"],
        "cannot resume checkpoint-2",
        "data.source: 'sample:hindi-dialogsum' -> 'sample:chat'",
        "train.learning_rate: 0.005 -> 0.001",
        "overwrite: true",
        "another run_name",
    )
    assert "logging_steps" not in line


def test_eval_params_that_disagree_with_the_run(capsys, tmp_path):
    """Defect 3: eval PARAMS on a run trained on other data names the key instead of scoring the wrong data."""
    fake_run(tmp_path / "runs" / "demo", "data.source=sample:chat", "data.task=chat")
    assert_bad(
        capsys,
        tmp_path,
        ["eval", str(DEMO), *out(tmp_path)],
        "data.source is 'sample:hindi-dialogsum'",
        "trained with 'sample:chat'",
        "--set data.source=",
    )
    assert_bad(capsys, tmp_path, ["eval", "--run", str(tmp_path / "nope")], "not a run folder")
    assert_bad(capsys, tmp_path, ["eval"], "--run RUN_DIR")


def test_infer_model_that_is_an_adapter(capsys, tmp_path):
    run = fake_run(tmp_path / "runs" / "demo")
    prompts = write(tmp_path / "in.jsonl", '"hello"\n')
    assert_bad(
        capsys,
        tmp_path,
        ["infer", "--model", str(run / "adapter"), "--input", str(prompts), "--output", str(tmp_path / "o.jsonl")],
        "is a LoRA adapter folder",
        f"--model tiny-gemma2 --adapter {run / 'adapter'}",
        f"--run {run}",
    )
    assert_bad(
        capsys,
        tmp_path,
        ["infer", "--input", str(prompts), "--output", str(tmp_path / "o.jsonl")],
        "infer needs --run RUN_DIR",
    )


# ---------------------------------------------------------------- disk


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the check cannot fail as root")
def test_read_only_output_dir(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert_bad(capsys, tmp_path, ["train", str(DEMO), *FAST, "--set", f"output_dir={ro}"], "cannot write here")
    finally:
        ro.chmod(stat.S_IRWXU)


def test_output_dir_that_is_a_file(capsys, tmp_path):
    """As root a read-only folder is still writable, so a file in the way stands in for an unwritable place."""
    blocker = write(tmp_path / "blocker", "x")
    assert_bad(capsys, tmp_path, ["train", str(DEMO), *FAST, "--set", f"output_dir={blocker}"], "cannot write here")


def test_export_of_something_that_is_not_a_run(capsys, tmp_path):
    assert_bad(capsys, tmp_path, ["export", str(tmp_path)], "not a run folder")


# ---------------------------------------------------------------- process level, determinism


def test_process_exit_code_and_no_traceback(tmp_path):
    """The installed entry point itself: exit 2, one line on stderr, no traceback, fast (no heavy import)."""
    params = write(tmp_path / "p.yaml", "train:\n  max_step: 5\n")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "unsloth-sft"), "train", str(params)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"unsloth-sft: error: {params}: unknown key 'train.max_step'; did you mean 'max_steps'?"
    ]
    assert "torch" not in done.stderr and done.stdout == ""


@pytest.mark.slow
def test_bad_input_after_unsloth_loaded_prints_one_line(tmp_path):
    """Defects 5 and 6: with the unsloth backend, an error found after the model loaded is still the only line on
    stderr (no import-order warning: unsloth is imported first; no loading bars or kernel notices)."""
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "unsloth-sft"),
            "train",
            str(DEMO),
            "--set",
            f"output_dir={tmp_path / 'runs'}",
            "--set",
            "lora.target_modules=[q_proj,query_key_value]",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr[-2000:]
    assert done.stderr.startswith("unsloth-sft: error: lora.target_modules ['query_key_value']")
    assert "Unsloth should be imported before" not in done.stdout + done.stderr
    assert "unsloth backend" not in done.stdout or "Unsloth" in done.stdout  # unsloth did load (its notice)


def test_preview_prints_no_progress_bars(capsys, tmp_path):
    """Defect 6: a first preview (the tokenized cache written) shows examples, not "Saving the dataset" bars."""
    from unsloth_sft.app.cli import main

    rows = "".join(json.dumps({"dialogue": f"d {i} {tmp_path.name}", "summary": f"s{i}"}) + "\n" for i in range(4))
    data = write(tmp_path / "d.jsonl", rows)
    assert main(["preview", str(DEMO), "--set", f"data.source={data}", "-n", "1"]) == 0
    captured = capsys.readouterr()
    assert "[[" in captured.out and captured.err == ""


@pytest.mark.slow
def test_same_recipe_same_loss_curve(capsys, tmp_path):
    """The same recipe and seed give the same loss curve on CPU, twice."""
    from unsloth_sft.app.cli import main

    curves = []
    for name in ("a", "b"):
        assert (
            main(
                [
                    "train",
                    str(ROOT / "params/cpu/chat.yaml"),
                    "--set",
                    f"output_dir={tmp_path}",
                    "--set",
                    f"run_name={name}",
                    "--set",
                    "train.max_steps=6",
                    "--set",
                    "model.backend=transformers",
                    "--set",
                    "data.max_samples=12",
                    "--set",
                    "train.per_device_train_batch_size=2",
                ]
            )
            == 0
        )
        curves.append(json.loads((tmp_path / name / "loss_history.json").read_text())["history"])
    assert curves[0] == curves[1] and len(curves[0]) == 6


def test_token_as_notebook_parameter_is_refused():
    """papermill -p hf_token ...: refused with the reason, and the value is not repeated."""
    from unsloth_sft.core.errors import ConfigError
    from unsloth_sft.notebooks import notebook_config

    with pytest.raises(ConfigError, match="HF_TOKEN") as err:
        notebook_config({"hf_token": "hf_abcdef123456", "params_file": None}, defined={"params_file"})
    assert "hf_abcdef123456" not in str(err.value)
