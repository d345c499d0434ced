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
        config = (tmp_path / "busy" / "config.yaml").read_bytes()
        for args in (
            ["train", DEMO, *sets(*FAST)],
            ["eval", "--run", tmp_path / "busy"],
            ["export", tmp_path / "busy"],
        ):
            if args[0] == "train":
                args += sets(f"output_dir={tmp_path}", "run_name=busy")
            line = assert_refused(cli(*args, cwd=tmp_path), f"{tmp_path / 'busy'} is in use by pid {first.pid}")
            assert "wait for it to finish, or choose another run_name" in line
        assert (tmp_path / "busy" / "config.yaml").read_bytes() == config  # the holder's run, as it wrote it
        assert not (tmp_path / "busy" / "eval").exists() and not (tmp_path / "busy" / "merged").exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert lock.exists()  # a SIGKILL leaves the file, but the OS lock died with the process
    done = cli("train", DEMO, *sets(*FAST, f"output_dir={tmp_path}", "run_name=busy"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not lock.exists() and leftovers(tmp_path) == [] and children_of(str(tmp_path)) == []


def test_a_second_sweep_on_a_folder_is_refused_naming_the_holder(tmp_path):
    """The sweep folder's lock is the run folders' (runs.lock): held here, as a first sweep holds it while it runs."""
    from unsloth_sft.studies.sweep import sweep_lock

    folder = tmp_path / "s"
    args = ["sweep", DEMO, "--grid", "lora.r=4,8", "--out", folder, *sets(*FAST, f"output_dir={tmp_path}")]
    with sweep_lock(folder):
        line = assert_refused(cli(*args, cwd=tmp_path), f"{folder} is in use by pid {os.getpid()} on ")
        assert line.endswith("one sweep runs a sweep folder at a time; wait for it, or choose another --out")
        assert sorted(p.name for p in folder.iterdir()) == [".sweep.lock"]  # the first sweep's folder untouched
    assert list(folder.iterdir()) == []  # the lock file goes with its release


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


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a notebook's kernel, say)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(proc.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_a_notebook_never_writes_over_itself_and_a_kill_leaves_the_older_output(tmp_path):
    nbformat = pytest.importorskip("nbformat")

    def notebook(path: Path, code: str) -> Path:
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)]), path)
        return path

    nb = notebook(tmp_path / "nb.ipynb", "print('ran')")
    (tmp_path / "sym.ipynb").symlink_to(nb)
    os.link(nb, tmp_path / "hard.ipynb")
    before = nb.read_bytes()
    for output in (nb, tmp_path / "." / "nb.ipynb", tmp_path / "sym.ipynb", tmp_path / "hard.ipynb"):
        done = cli("notebook", nb, DEMO, "--output", output, cwd=tmp_path)
        assert_refused(done, f"--output {output} is the notebook {nb} itself; write the executed copy elsewhere")
        assert nb.read_bytes() == before
    out = tmp_path / "out.ipynb"
    out.write_text("the older executed copy")
    slow = notebook(tmp_path / "slow.ipynb", "import time\ntime.sleep(600)")
    run = subprocess.Popen(
        [sys.executable, "-m", "unsloth_sft", "notebook", slow, DEMO, "--output", out],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while not (list(tmp_path.glob(".out.ipynb.tmp-*")) and children(run.pid)) and time.time() < deadline:
            time.sleep(0.2)
        assert list(tmp_path.glob(".out.ipynb.tmp-*")), "papermill never started: " + (run.stderr.read() or "")[-2000:]
        kernels = children(run.pid)
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 130 and out.read_text() == "the older executed copy"  # the temporary file is gone too
    deadline = time.time() + 20
    while any(Path(f"/proc/{pid}").exists() for pid in kernels) and time.time() < deadline:
        time.sleep(0.2)
    assert kernels and not any(Path(f"/proc/{pid}").exists() for pid in kernels)  # the kernel died with it
    done = cli("notebook", nb, DEMO, "--output", out, cwd=tmp_path)
    assert done.returncode == 0 and f"executed notebook: {out}" in done.stdout, done.stderr[-3000:]
    assert "papermill" in nbformat.read(out, as_version=4).metadata and nb.read_bytes() == before


# ------------------------------------------------------------------ 3. children die with their parent


def converter_children(marker: str) -> list[str]:
    return [p for p in children_of(marker) if "convert_hf_to_gguf" in p or "llama-quantize" in p]


@pytest.mark.skipif(
    not any((p / "convert_hf_to_gguf.py").is_file() for p in __import__("unsloth_sft.export.gguf", fromlist=["x"]).llama_cpp_candidates()),
    reason="llama.cpp's converter is not unpacked (scripts/setup.sh does it)",
)  # fmt: skip
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
@pytest.mark.bad_input  # a fault (a kill), not a one-line refusal: counted with the others all the same
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


def test_an_empty_mapping_or_a_sweep_section_alone_is_refused(tmp_path):
    """`{}`, or a sweep: section with no recipe beside it, would train the defaults (into runs/demo) like an empty file."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}  # to do\n")
    assert_refused(cli("train", empty, cwd=tmp_path), f"{empty}: the params file is an empty mapping", "params/")
    alone = tmp_path / "sweep-only.yaml"
    alone.write_text("sweep:\n  grid:\n    lora.r: [4, 8]\n")
    for args in (
        ["train", alone],
        ["preview", alone],
        ["sweep", alone],
        ["notebook", ROOT / "notebooks" / "train.ipynb", alone],
    ):
        line = assert_refused(cli(*args, cwd=tmp_path), f"{alone}: the params file holds only a sweep: section")
        assert line.endswith(
            "put the run's keys beside it (model:, data:, train: ...), e.g. start from params/demo-cpu.yaml"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.yaml", "sweep-only.yaml"]  # no runs/, no notebook


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
    # no half-converted folder in the conversion cache (the cache's tools/llama.cpp has a gguf-py of its own)
    assert leftovers(tmp_path, Path(os.environ["UNSLOTH_SFT_CACHE"]) / "gguf") == []


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


def test_a_data_file_where_the_params_file_goes_says_how_to_pass_it(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"instruction": "hi", "output": "hello"}\n')
    line = assert_refused(cli("train", rows, cwd=tmp_path), f"{rows} looks like a data file, not a params file")
    assert f"`unsloth-sft train RECIPE.yaml --set data.source={rows}`" in line
    done = cli("eval", rows, cwd=tmp_path)
    assert_refused(done, f"{rows} looks like a data file", f"`unsloth-sft eval --run RUN_DIR --data {rows}`")
    assert rows.read_text() == '{"instruction": "hi", "output": "hello"}\n'


def test_a_value_given_twice_in_a_sweep_grid_is_refused_before_anything_is_written(tmp_path):
    args = ["sweep", DEMO, "--grid", "train.learning_rate=1e-3,0.001", *sets(f"output_dir={tmp_path}")]
    line = assert_refused(cli(*args, cwd=tmp_path), "sweep.grid.train.learning_rate: the value 1e-3 is given twice")
    assert "(as 1e-3 and 0.001) and would train the same variant twice; remove the repeat" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.bad_input  # a warning, not a refusal: the command goes on
@pytest.mark.parametrize("command", ["infer", "export"])
def test_an_unfinished_run_is_used_with_a_warning(trained, tmp_path, command):
    run = copy_run(trained, tmp_path)
    (run / "metrics.json").unlink()
    prompts = tmp_path / "in.jsonl"
    prompts.write_text('"#Person1#: hi\\n#Person2#: hello"\n')
    out = tmp_path / "out.jsonl"
    args = {
        "infer": ["infer", "--run", run, "--input", prompts, "--output", out, *sets("eval.max_new_tokens=2")],
        "export": ["export", run, "--method", "lora"],
    }[command]
    done = cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    what = {"infer": "answering with", "export": "exporting"}[command]
    warnings = [line for line in done.stderr.splitlines() if "warning:" in line]
    assert warnings == [f"unsloth-sft: warning: {run} is not finished (no metrics.json): {what} the weights it has"]
    assert not (run / "metrics.json").exists()
