"""Faults a careless or unlucky user meets, each reproduced through the CLI in a subprocess: two writers on one run,
output over input, kills during an export, empty and duplicate-key configs, full and read-only disks, damaged
model and adapter files, wandb without a login, bad chat turns, and the quiet surprises. Each shows exit 2 and one
line on stderr (or one warning), the input and any finished run unchanged, no child process left, no temporary
file left. docs/failure-modes.md says what each command guarantees."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

DEMO = ROOT / "params" / "demo-cpu.yaml"
CHAT = ROOT / "params" / "cpu" / "chat.yaml"
FAST = ["model.load_in_4bit=false", "train.max_steps=2", "train.optim=adamw_torch", "export.save_methods=[lora]"]
FAST += ["model.backend=transformers", "eval.max_new_tokens=4", "train.per_device_train_batch_size=2"]
LEFTOVER = re.compile(r"\.tmp-|\.old$|^gguf-")


def sets(*keys: str) -> list[str]:
    return [a for k in keys for a in ("--set", k)]


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unsloth_sft", *map(str, args)],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def snapshot(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(*folders: Path) -> list[str]:
    return [str(p) for f in folders for p in f.rglob("*") if LEFTOVER.search(p.name)]


def children_of(marker: str) -> list[str]:
    """Processes whose command line names `marker` (a test's temporary folder): what a killed command left."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(f"{proc.name}: {cmdline[:160]}")
    return found


def assert_refused(done: subprocess.CompletedProcess, *needles: str, alone: bool = True) -> str:
    """exit 2, one `unsloth-sft: error: ...` line (with each needle) as the last line of stderr, no traceback;
    `alone`: the only line (a fault met mid-training follows the Trainer's own progress output instead)."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("unsloth-sft: error: ")]
    assert done.returncode == 2, done.stderr[-3000:] + done.stdout[-2000:]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(lines) == 1 or not alone, done.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run (adapter, no merge), trained once for the tests that need one."""
    home = tmp_path_factory.mktemp("trained")
    done = cli("train", DEMO, *sets(*FAST, f"output_dir={home}", "run_name=done"), cwd=home)
    assert done.returncode == 0, done.stderr[-3000:]
    return home / "done"


def copy_run(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "r"
    shutil.copytree(trained, run)
    return run


pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def nothing_left(tmp_path):
    """After every case: no process that names the test's folder, no temporary file or folder in it."""
    yield
    deadline = time.time() + 10
    while children_of(str(tmp_path)) and time.time() < deadline:
        time.sleep(0.2)
    assert children_of(str(tmp_path)) == []
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ 1. two writers, one run folder


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_blocks_nobody(tmp_path):
    first = subprocess.Popen(
        [sys.executable, "-m", "unsloth_sft", "train", DEMO, *sets(*FAST, "train.max_steps=400"),
         *sets(f"output_dir={tmp_path}", "run_name=busy")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lock = tmp_path / ".busy.lock"
    try:
        deadline = time.time() + 120
        while not (tmp_path / "busy" / "config.yaml").is_file() and time.time() < deadline:
            time.sleep(0.5)
        assert lock.is_file() and first.poll() is None, first.stderr.read() if first.poll() is not None else ""
        for args in (
            ["train", DEMO, *sets(*FAST)],
            ["eval", "--run", tmp_path / "busy"],
            ["export", tmp_path / "busy"],
        ):
            if args[0] == "train":
                args += sets(f"output_dir={tmp_path}", "run_name=busy")
            line = assert_refused(cli(*args, cwd=tmp_path), f"{tmp_path / 'busy'} is in use by pid {first.pid}")
            assert "wait for it to finish, or choose another run_name" in line
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert lock.exists()  # a SIGKILL leaves the file, but the OS lock died with the process
    done = cli("train", DEMO, *sets(*FAST, f"output_dir={tmp_path}", "run_name=busy"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not lock.exists() and leftovers(tmp_path) == [] and children_of(str(tmp_path)) == []


# ------------------------------------------------------------------ 2. output over input


def test_infer_never_writes_over_its_input(trained, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('"#Person1#: hi\\n#Person2#: hello"\n', encoding="utf-8")
    (tmp_path / "link.jsonl").symlink_to(prompts)
    before = prompts.read_bytes()
    for output in (prompts, tmp_path / "link.jsonl", tmp_path / "." / "prompts.jsonl"):
        done = cli("infer", "--run", trained, "--input", prompts, "--output", output, cwd=tmp_path)
        assert_refused(done, "is the --input file; write the answers to another file")
        assert prompts.read_bytes() == before
    (tmp_path / "a-file").write_text("x")
    done = cli(
        "infer", "--run", trained, "--input", prompts, "--output", tmp_path / "a-file" / "out.jsonl", cwd=tmp_path
    )
    assert_refused(done, "is a file, not a folder")


# ------------------------------------------------------------------ 3. children die with their parent


def converter_children(marker: str) -> list[str]:
    return [p for p in children_of(marker) if "convert_hf_to_gguf" in p or "llama-quantize" in p]


@pytest.mark.skipif(
    not any((p / "convert_hf_to_gguf.py").is_file() for p in __import__("unsloth_sft.export.gguf", fromlist=["x"]).llama_cpp_candidates()),
    reason="llama.cpp's converter is not unpacked (scripts/setup.sh does it)",
)  # fmt: skip
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_export_leaves_no_converter_running_and_the_next_command_cleans_up(trained, tmp_path, how):
    run = copy_run(trained, tmp_path)
    export = subprocess.Popen(
        [sys.executable, "-m", "unsloth_sft", "export", run, "--method", "gguf", "--quant", "f16"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 300
        while not converter_children(str(run)) and export.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert converter_children(str(run)), "the converter never started: " + (export.stderr.read() or "")[-2000:]
        export.send_signal(how)
        export.wait(timeout=60)
    finally:
        export.kill()
    deadline = time.time() + 20
    while converter_children(str(run)) and time.time() < deadline:
        time.sleep(0.2)
    assert converter_children(str(run)) == []  # PR_SET_PDEATHSIG (SIGKILL) or our own kill (SIGTERM)
    assert list(Path("/tmp").glob(f"gguf-*{export.pid}*")) == []
    if how == signal.SIGTERM:  # cleanup ran as on Ctrl-C: nothing left at all
        assert export.returncode == 130 and leftovers(tmp_path) == []
    else:  # nothing could run in the killed process: the next command in the folder removes it and says so
        assert leftovers(run)
    done = cli("export", run, "--method", "lora", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert leftovers(tmp_path) == [] and not (run / "gguf").exists()
    if how == signal.SIGKILL:
        assert "(left by an interrupted write)" in done.stdout


# ------------------------------------------------------------------ 4. empty or meaningless config


def test_an_empty_params_file_and_a_duplicate_key_are_refused(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n\n")
    assert_refused(cli("train", empty, cwd=tmp_path), f"{empty}: the params file is empty")
    twice = tmp_path / "twice.yaml"
    twice.write_text(DEMO.read_text() + "\ntrain:\n  max_steps: 5\n")
    line = assert_refused(cli("train", twice, cwd=tmp_path), f"{twice}: line ", "duplicate key 'train' (also on line ")
    assert line.endswith("keep one of them")
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ 5. one line where a traceback was


@pytest.fixture
def tmpfs(tmp_path):
    """A real small disk (tmpfs) mounted in the test's folder, unmounted after; skipped where mounting is refused."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()[:80]}): needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Take all but `leave` bytes of a disk."""
    stat = os.statvfs(disk)
    (disk / "filler").write_bytes(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))


def test_a_full_disk_while_training_is_one_line_and_nothing_half_written(tmpfs, tmp_path):
    fill(tmpfs, leave=200_000)  # the config and the loss curve fit; the adapter (~400 kB with its tokenizer) does not
    done = cli("train", DEMO, *sets(*FAST, f"output_dir={tmpfs}", "run_name=full"), cwd=tmp_path)
    line = assert_refused(done, "cannot write (No space left on device)", "free some space", alone=False)
    assert str(tmpfs) in line
    assert leftovers(tmpfs) == [] and not (tmpfs / "full" / "metrics.json").exists()
    assert not (tmpfs / "full" / "adapter").exists() or (tmpfs / "full" / "adapter" / "adapter_config.json").is_file()


def test_eval_on_a_read_only_run_folder_says_so_before_evaluating(trained, tmpfs, tmp_path):
    run = tmpfs / "r"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("checkpoints", "eval"))
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    started = time.time()
    done = cli("eval", "--run", run, cwd=tmp_path)
    assert_refused(done, f"{tmpfs}", "Read-only file system")
    assert time.time() - started < 60 and "generating" not in done.stdout


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"GGUF\x03\x00\x00\x00" + b"\x00" * 64, "a GGUF without a model or a tokenizer"),  # a header, nothing after
        (b"<html>Rate limit exceeded</html>", "not a complete GGUF file (GGUF magic invalid)"),  # a failed download
        (b"GGUF\x03\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00\x09", "not a complete GGUF file"),  # cut short
    ],
)
def test_a_damaged_gguf_as_the_model_is_one_line(tmp_path, content, problem):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(content)
    done = cli("train", DEMO, *sets(*FAST, f"model.name={gguf}", f"output_dir={tmp_path}"), cwd=tmp_path)
    assert_refused(done, f"{gguf}: {problem}", "download or copy it again")
    assert leftovers(tmp_path, Path(os.environ["UNSLOTH_SFT_CACHE"])) == []  # no half-converted folder in the cache


@pytest.mark.parametrize("command", ["export", "eval", "infer"])
def test_a_truncated_adapter_is_one_line_before_any_model_loads(trained, tmp_path, command):
    run = copy_run(trained, tmp_path)
    weights = run / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    prompts = tmp_path / "in.jsonl"
    prompts.write_text('"hi"\n')
    args = {
        "export": ["export", run, "--method", "merged_16bit"],
        "eval": ["eval", "--run", run],
        "infer": ["infer", "--run", run, "--input", prompts, "--output", tmp_path / "out.jsonl"],
    }[command]
    before = snapshot(run)
    assert_refused(cli(*args, cwd=tmp_path), f"{run / 'adapter'}", "the adapter is damaged or cut short")
    assert snapshot(run) == before and not (tmp_path / "out.jsonl").exists()


def test_wandb_without_a_login_is_refused_before_the_model_loads(tmp_path):
    env = {"WANDB_MODE": "", "WANDB_API_KEY": "", "HOME": str(tmp_path), "NETRC": str(tmp_path / "no-netrc")}
    done = cli("train", DEMO, *sets(*FAST, "train.report_to=[wandb]", f"output_dir={tmp_path}"), cwd=tmp_path, env=env)
    assert_refused(done, "train.report_to: wandb has no login here", "WANDB_MODE=offline")
    assert "backend |" not in done.stdout and not (tmp_path / "demo").exists()


# ------------------------------------------------------------------ 6. bad chat data, found before the model


@pytest.mark.parametrize(
    "turns, rule",
    [
        (
            [("assistant", "I start"), ("user", "ok"), ("assistant", "fine")],
            "opens the conversation with the assistant",
        ),
        (
            [("user", "hi"), ("system", "be brief"), ("assistant", "hello")],
            "is a system message inside the conversation",
        ),
    ],
)
def test_bad_chat_turns_name_file_line_and_rule_before_the_model_loads(tmp_path, turns, rule):
    data = tmp_path / "chat.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad = {"messages": [{"role": r, "content": c} for r, c in turns]}
    data.write_text("\n".join(json.dumps(row) for row in (good, good, bad, good)) + "\n")
    done = cli("train", CHAT, *sets(*FAST, f"data.source={data}", f"output_dir={tmp_path}"), cwd=tmp_path)
    assert_refused(done, f"{data} line 3: messages[", rule)
    assert "backend |" not in done.stdout


# ------------------------------------------------------------------ 7. quiet surprises get a word


def test_the_quiet_surprises_get_a_word(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    (run / "metrics.json").unlink()  # an unfinished run folder
    done = cli("eval", "--run", run, "--set", "eval.max_new_tokens=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"warning: {run} is not finished (no metrics.json)" in done.stderr
    done = cli("eval", run, cwd=tmp_path)  # a run folder where a params file goes
    assert_refused(done, f"{run} is a run folder, not a params file", f"unsloth-sft eval --run {run}")
    parquet = tmp_path / "rows.parquet"
    parquet.write_bytes(b"PAR1 cut short PAR1")
    done = cli("train", DEMO, *sets(*FAST, f"data.source={parquet}", f"output_dir={tmp_path}"), cwd=tmp_path)
    assert_refused(done, f"{parquet}: cannot parse as parquet")
    done = cli(
        "train", DEMO, *sets(*FAST, "train.max_steps=1", "model.max_seq_length=9000", f"output_dir={tmp_path}"),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stderr.splitlines() if "warning:" in line]
    assert warnings == [
        "unsloth-sft: warning: model.max_seq_length 9000 is beyond tiny-gemma2's context of 4096 tokens: positions "
        "past it were never trained; lower it to 4096 or less"
    ]
