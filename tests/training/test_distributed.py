"""Several processes on the CPU (DDP over gloo): ranks see different data, rank 0 alone writes, adapter = rank 0's;
on one machine, and as two "machines" of one process each (accelerate's multi-node launch on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT, small_config

ACCELERATE_CPU = ROOT / "params" / "accelerate" / "cpu-2proc.yaml"
MULTI_NODE = ROOT / "params" / "accelerate" / "multi-node.yaml"
STEPS, BATCH = 4, 2

# Runs on every rank under `accelerate launch`: the library's own start -> fit -> finish, plus what the test
# checks. Per-rank files go to OUT (outside the run folder): the rows each rank trained on, its LoRA weights
# after training, and every write it made under the run folder (Python audit events: open for writing, mkdir,
# rename, remove), so "rank 1 never writes" is observed, not assumed.
DRIVER = textwrap.dedent("""
    import hashlib, json, os, sys
    from pathlib import Path

    params, out = sys.argv[1], Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    from unsloth_sft.config import load_config
    from unsloth_sft import pipeline

    cfg = load_config(params)
    run_dir = str(cfg.run_dir.absolute())
    writes = []

    def audit(event, args):
        if event == "open":
            path, mode, flags = args
            writing = any(c in (mode or "") for c in "wax+") or (mode is None and isinstance(flags, int)
                                                                  and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            paths = [path] if writing else []
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
            paths = [args[0]]
        elif event == "os.rename":
            paths = [args[0], args[1]]
        else:
            return
        for p in paths:
            if isinstance(p, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(p)).startswith(run_dir):
                writes.append([event, os.path.relpath(os.path.abspath(os.fsdecode(p)), run_dir)])

    sys.addaudithook(audit)
    run = pipeline.start(cfg)
    rows = []

    def record(module, args, kwargs):
        if module.training and "input_ids" in kwargs:
            mask = kwargs.get("attention_mask")
            for i, ids in enumerate(kwargs["input_ids"]):
                real = ids[mask[i].bool()] if mask is not None else ids
                rows.append(hashlib.sha256(real.cpu().numpy().tobytes()).hexdigest())

    run.loaded.model.register_forward_pre_hook(record, with_kwargs=True)
    pipeline.fit(run)
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    lora = get_peft_model_state_dict(run.loaded.model)
    save_file({k: v.detach().cpu().contiguous() for k, v in lora.items()}, str(out / f"lora-rank{rank}.safetensors"))
    metrics = pipeline.finish(run)
    where = {"machine": os.environ.get("GROUP_RANK"), "local_rank": os.environ.get("LOCAL_RANK")}  # from torchrun
    (out / f"rank{rank}.json").write_text(json.dumps({"rows": rows, "writes": writes, "steps": metrics["steps"], **where}))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _params(tmp_path: Path, *overrides: str) -> Path:
    """The tiny model, 16-bit LoRA, transformers backend, a few steps: a params file both launchers can read."""
    import yaml

    cfg = small_config(
        tmp_path,
        "model.backend=transformers",
        f"train.max_steps={STEPS}",
        f"train.per_device_train_batch_size={BATCH}",
        "train.gradient_accumulation_steps=1",
        "model.max_seq_length=256",
        *overrides,
    )
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict(), allow_unicode=True), encoding="utf-8")
    return path


def _launch(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _run_dir_files(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))


def _driver(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The params file, the driver script and the folder it writes each rank's observations to."""
    params = _params(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "driver.py").write_text(DRIVER)
    return params, tmp_path / "driver.py", out


@pytest.mark.slow
def test_two_cpu_processes_shard_data_and_rank0_writes_once(tmp_path):
    """accelerate launch, 2 gloo processes: different rows per rank, same weights, one adapter written by rank 0."""
    params, driver, out = _driver(tmp_path)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CPU)]
    _launch([*launch, "--main_process_port", str(_free_port()), str(driver), str(params), str(out)], tmp_path)
    _check_two_ranks(out, tmp_path / "t")


@pytest.mark.slow
def test_two_machines_of_one_process_each_train_as_one_job(tmp_path):
    """params/accelerate/multi-node.yaml as its header runs it, once per "machine" (machine_rank 0 and 1, both on
    127.0.0.1, started at once): torchrun joins them into one gloo group of 2, and the run is the same as on one
    machine: the same steps on both ranks, different rows, equal weights, one run folder written by rank 0 alone."""
    params, driver, out = _driver(tmp_path)
    port = str(_free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    machines = [
        subprocess.Popen(
            [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(MULTI_NODE),
             "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port,
             str(driver), str(params), str(out)],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]  # fmt: skip
    try:
        logs = [m.communicate(timeout=300)[0] for m in machines]
    finally:
        for m in machines:
            if m.poll() is None:
                m.kill()
                m.wait()
    assert [m.returncode for m in machines] == [0, 0], "\n".join(log[-3000:] for log in logs)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["machine"], r["local_rank"]) for r in ranks] == [("0", "0"), ("1", "0")]  # one process per machine
    _check_two_ranks(out, tmp_path / "t")


def _check_two_ranks(out: Path, run_dir: Path) -> None:
    """What the driver saw on each rank, and the run folder it left."""
    from safetensors.torch import load_file

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    # Each rank trained on its own shard: STEPS x BATCH rows, none shared.
    assert [len(r["rows"]) for r in ranks] == [STEPS * BATCH] * 2
    assert not set(ranks[0]["rows"]) & set(ranks[1]["rows"])
    assert ranks[0]["steps"] == ranks[1]["steps"] == STEPS

    # Only rank 0 wrote into the run folder, and it wrote the config once.
    assert ranks[1]["writes"] == []
    opened = [path for event, path in ranks[0]["writes"] if event == "open"]
    # a hidden temporary sibling renamed into place (.config.tmp-*, or .config.yaml.tmp-PID-* with the writer's pid)
    assert len({path for path in opened if re.match(r"\.config(\.yaml)?\.tmp-", path)}) == 1  # config.yaml once
    assert any(re.match(r"\.metrics(\.json)?\.tmp-", path) for path in opened)  # metrics.json, atomically

    # DDP kept the ranks' weights equal, training moved them, and the adapter on disk is exactly rank 0's.
    weights = [load_file(str(out / f"lora-rank{r}.safetensors")) for r in (0, 1)]
    saved = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert set(saved) == set(weights[0]) == set(weights[1])
    assert all(weights[0][k].equal(weights[1][k]) and weights[0][k].equal(saved[k]) for k in saved)
    assert any(saved[k].abs().sum() > 0 for k in saved if "lora_B" in k)

    # One finished run: one adapter, no leftover temporary files, written in order config -> adapter -> metrics.
    files = _run_dir_files(run_dir)
    assert [f for f in files if f.endswith("adapter_config.json")] == ["adapter/adapter_config.json"]
    assert not [f for f in files if Path(f).name.startswith(".")], files
    mtime = {name: (run_dir / name).stat().st_mtime for name in ("config.yaml", "adapter", "metrics.json")}
    assert mtime["config.yaml"] <= mtime["adapter"] <= mtime["metrics.json"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["processes"] == 2
    assert metrics["effective_batch_size"] == BATCH * 1 * 2
    assert [m["rank"] for m in metrics["memory_per_rank"]] == [0, 1]
    assert all(m["peak_rss_mb"] > 0 for m in metrics["memory_per_rank"])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["transformers", "unsloth"])
def test_torchrun_cli_trains_with_two_processes(tmp_path, backend):
    """`torchrun -m unsloth_sft train`: exit 0, metrics count 2 processes, the run folder holds one finished run.

    unsloth 2026.10.9 supports DDP (unsloth/models/_ddp_defaults.py), and its CPU backend trains under gloo too.
    """
    if backend == "unsloth":
        from unsloth_sft.models.backends import unsloth_available

        if not unsloth_available():
            pytest.skip("unsloth does not import here")
    params = _params(tmp_path, f"model.backend={backend}")
    proc = _launch(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "unsloth_sft",
            "train",
            str(params),
        ],
        tmp_path,
    )
    assert "2 processes x 2 per device x 1 accumulation = effective batch 4" in proc.stdout
    run_dir = tmp_path / "t"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["processes"], metrics["effective_batch_size"], metrics["steps"]) == (2, 4, STEPS)
    assert set(metrics["exported"]) == {"lora"} and metrics["backend"] == backend
    assert not [f for f in _run_dir_files(run_dir) if Path(f).name.startswith(".")]


def test_sharded_launch_refuses_unsloth_before_writing(tmp_path, monkeypatch):
    """FSDP / DeepSpeed launches: backend unsloth is refused in one line naming the fix; nothing is written."""
    from unsloth_sft import pipeline
    from unsloth_sft.core.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    cfg = small_config(tmp_path, "model.backend=unsloth")
    with pytest.raises(ConfigError, match=r"set model\.backend: transformers") as err:
        pipeline.start(cfg)
    assert "\n" not in str(err.value) and "FSDP" in str(err.value)
    assert not cfg.run_dir.exists()


def test_launch_checks(tmp_path, monkeypatch):
    """DDP keeps the backend asked for; a sharded launch turns auto into transformers and refuses 4-bit."""
    from unsloth_sft.core.errors import ConfigError
    from unsloth_sft.training.distributed import check_launch

    monkeypatch.setenv("WORLD_SIZE", "2")
    for backend in ("unsloth", "auto", "transformers"):  # DDP: each rank holds the whole model
        cfg = small_config(tmp_path, f"model.backend={backend}")
        assert check_launch(cfg) is cfg
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert check_launch(small_config(tmp_path)).model.backend == "transformers"
    with pytest.raises(ConfigError, match="ddp.yaml"):
        check_launch(small_config(tmp_path, "model.load_in_4bit=true", "finetune=qlora"))
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: nothing is sharded, nothing is refused
    cfg = small_config(tmp_path, "model.backend=unsloth")
    assert check_launch(cfg) is cfg
