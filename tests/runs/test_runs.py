"""The run folder (RunDir): what it holds, when it may resume, how overwrite replaces it, the config eval uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unsloth_sft.config.diff import config_changes
from unsloth_sft.config.load import load_config, save_config
from unsloth_sft.core.errors import ConfigError, ModelError, RunError
from unsloth_sft.runs.folder import RunDir, RunModel

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "params" / "demo-cpu.yaml"


def demo(tmp_path: Path, *overrides: str):
    return load_config(DEMO, [f"output_dir={tmp_path}", *overrides])


def make_run(
    tmp_path: Path, *overrides: str, checkpoint: int | None = None, finished: bool = False, extra: tuple[str, ...] = ()
) -> RunDir:
    """A run folder as training leaves it: config.yaml, an adapter config, optional checkpoint/metrics/other files."""
    run = RunDir(demo(tmp_path, *overrides).run_dir)
    run.path.mkdir(parents=True)
    save_config(demo(tmp_path, *overrides), run.config_file)
    (run.adapter).mkdir()
    (run.adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny-gemma2"}))
    if checkpoint is not None:
        state = run.checkpoints / f"checkpoint-{checkpoint}" / "trainer_state.json"
        state.parent.mkdir(parents=True)
        state.write_text(json.dumps({"global_step": checkpoint, "num_input_tokens_seen": 1000}))
    for name in extra:
        (run / name).mkdir(parents=True, exist_ok=True)
        (run / name / "x").write_text("stale")
    if finished:
        run.metrics_file.write_text(json.dumps({"steps": 60, "task": "summarization"}))
    return run


def test_config_changes_list_only_what_shapes_training(tmp_path):
    saved = demo(tmp_path).to_dict()
    new = demo(
        tmp_path,
        "train.learning_rate=0.001",
        "data.source=sample:chat",
        "train.logging_steps=5",
        "train.save_steps=10",
        "eval.max_new_tokens=8",
        "export.save_methods=[lora]",
        "overwrite=true",
        "train.report_to=[tensorboard]",
    ).to_dict()
    changes = config_changes(saved, new)
    assert changes == ["data.source: 'sample:hindi-dialogsum' -> 'sample:chat'", "train.learning_rate: 0.005 -> 0.001"]
    assert config_changes(saved, demo(tmp_path, "data.columns={dialogue: संवाद}").to_dict()) == [
        "data.columns: {} -> {'dialogue': 'संवाद'}"
    ]


def test_resume_with_the_same_config_is_allowed_and_picks_the_newest_checkpoint(tmp_path):
    run = make_run(tmp_path, checkpoint=4)
    (run.checkpoints / "checkpoint-9").mkdir()  # no trainer_state.json: written last, so this one is incomplete
    cfg = demo(tmp_path, "train.logging_steps=3", "train.save_steps=2")  # keys that may change on resume
    run.check(cfg)
    assert run.latest_checkpoint().name == "checkpoint-4"
    assert run.prepare(cfg) == (run.checkpoints / "checkpoint-4", None)


@pytest.mark.parametrize(
    "change, key",
    [
        ("data.source=sample:chat", "data.source"),
        ("train.seed=1", "train.seed"),
        ("lora.r=8", "lora.r"),
        ("model.max_seq_length=512", "model.max_seq_length"),
    ],
)
def test_resume_with_another_config_is_refused(tmp_path, change, key):
    """Defect 1: a rerun of the same run_name with another data/recipe must not resume the old checkpoint."""
    run = make_run(tmp_path, checkpoint=4)
    with pytest.raises(RunError) as err:
        run.check(demo(tmp_path, change))
    message = str(err.value)
    assert key in message and "overwrite: true" in message and "another run_name" in message
    assert "\n" not in message


def test_explicit_checkpoint_of_another_run_is_compared_with_that_run(tmp_path):
    other = make_run(tmp_path / "o", checkpoint=2)
    cfg = demo(tmp_path, f"train.resume={other.checkpoints / 'checkpoint-2'}", "train.learning_rate=0.1")
    with pytest.raises(RunError, match="train.learning_rate"):
        RunDir(cfg.run_dir).check(cfg)


def test_resume_never_over_checkpoints_is_refused(tmp_path):
    run = make_run(tmp_path, checkpoint=4)
    with pytest.raises(RunError, match="overwrite: true"):
        run.check(demo(tmp_path, "train.resume=never"))


def test_finished_run_is_refused_without_overwrite(tmp_path):
    run = make_run(tmp_path, finished=True)
    with pytest.raises(RunError, match="holds a finished run"):
        run.check(demo(tmp_path))


def test_overwrite_sets_the_old_run_aside_until_the_new_one_finishes(tmp_path):
    """Defect 2: overwrite replaces the whole folder; the old one stays recoverable until the new run is done."""
    run = make_run(tmp_path, checkpoint=4, finished=True, extra=("merged", "eval", "eval-other"))
    (run / "train.ipynb").write_text("{}")
    resume_from, aside = run.prepare(demo(tmp_path, "overwrite=true", "data.source=sample:chat"))
    assert resume_from is None and aside is not None and aside.parent == run.path.parent
    assert aside.name.startswith(f".{run.path.name}.old-")
    assert run.path.is_dir() and list(run.path.iterdir()) == []  # nothing of the old run left to load
    assert (aside / "merged" / "x").read_text() == "stale" and (aside / "metrics.json").is_file()
    RunDir.drop(aside)
    assert not aside.exists()


def test_overwrite_of_a_folder_with_only_the_notebook_being_written(tmp_path):
    run = RunDir(tmp_path / "demo")
    run.path.mkdir()
    (run / "train.ipynb").write_text("{}")  # `unsloth-sft notebook` output, written before the kernel starts
    assert run.prepare(demo(tmp_path, "overwrite=true")) == (None, None)
    assert (run / "train.ipynb").is_file()


def test_a_fresh_start_clears_what_an_unfinished_attempt_left(tmp_path):
    run = make_run(tmp_path, extra=("merged", "eval"))
    (run / "loss.png").write_bytes(b"png")
    (run / "train.ipynb").write_text("{}")  # the notebook papermill is writing now: kept
    assert run.prepare(demo(tmp_path)) == (None, None)
    assert sorted(p.name for p in run.path.iterdir()) == ["config.yaml", "train.ipynb"]


def test_what_a_run_holds(tmp_path):
    run = make_run(tmp_path)
    assert run.kind == "lora" and run.base_model == "tiny-gemma2" and not run.is_finished
    assert run.model() == RunModel("tiny-gemma2", str(run.adapter), "tiny-gemma2")
    assert run.model("adapter").base_switchable
    (run.merged).mkdir()
    (run.merged / "config.json").write_text("{}")
    assert run.model() == RunModel(str(run.merged), None, "tiny-gemma2")  # merged weights first: no adapter to apply
    assert run.model("adapter") == RunModel("tiny-gemma2", str(run.adapter), "tiny-gemma2")  # eval: base + adapter
    assert run.model("adapter", base="other/base").weights == "other/base"  # eval --set model.name=...
    assert run.eval_dir() == run.path / "eval" and run.eval_dir("/x/hindi.csv") == run.path / "eval-hindi"
    empty = RunDir(tmp_path / "empty")
    assert empty.kind is None
    with pytest.raises(ModelError, match="no adapter/ or merged/"):
        empty.model()
    with pytest.raises(RunError, match="not a run folder"):
        empty.config()


def test_run_summary(tmp_path):
    from unsloth_sft.evaluation.report import run_summary

    run = make_run(tmp_path)
    run.metrics_file.write_text(
        json.dumps(
            {
                "steps": 60,
                "runtime_s": 15.2,
                "first_loss": 3.4,
                "last_loss": 2.1,
                "memory": {"peak_rss_mb": 812.5},
                "resumed_at_step": None,
            }
        )
    )
    run.eval_dir().mkdir()
    (run.eval_dir() / "metrics.json").write_text(
        json.dumps({"task": "summarization", "metrics": {"rougeL": {"base": 0.05, "tuned": 0.17}}})
    )
    text = run_summary(run)
    assert "60 steps in 15 s, loss 3.400 -> 2.100, peak RSS 812.5 MiB" in text
    assert "eval: rougeL 0.0500 -> 0.1700" in text and f"adapter: {run.adapter}" in text
    assert f"unsloth-sft eval --run {run}" in text and f"unsloth-sft infer --run {run}" in text
    assert f"unsloth-sft export {run}" in text


# ---------------------------------------------------------------- the config eval and infer use


def test_eval_config_is_the_runs_own(tmp_path):
    """Defect 3: the run's config.yaml decides data and template; a params file may only bring eval settings."""
    from unsloth_sft.runs.config import run_config

    run = make_run(tmp_path, "data.source=sample:chat", "data.task=chat")
    cfg = run_config(run)
    assert cfg.data.source == "sample:chat" and cfg.data.task == "chat"
    cfg = run_config(run, demo(tmp_path, "data.source=sample:chat", "data.task=chat", "eval.max_new_tokens=7"))
    assert cfg.eval.max_new_tokens == 7
    with pytest.raises(ConfigError) as err:
        run_config(run, demo(tmp_path), where="params/demo-cpu.yaml")
    assert "data.source is 'sample:hindi-dialogsum'" in str(err.value) and "'sample:chat'" in str(err.value)


def test_an_explicit_override_wins_and_is_printed(tmp_path, capsys):
    from unsloth_sft.runs.config import run_config

    run = make_run(tmp_path)
    overrides = ["data.test_size=0.5"]
    cfg = run_config(run, demo(tmp_path, *overrides), overrides)
    assert cfg.data.test_size == 0.5
    assert "note: data.test_size = 0.5 (--set), the run was trained with 0.1" in capsys.readouterr().out


def test_eval_on_another_file_makes_every_row_a_test_example(tmp_path):
    from unsloth_sft.data.examples import load_examples
    from unsloth_sft.runs.config import run_config

    run = make_run(tmp_path, "data.task=auto", finished=True)  # metrics.json: the run trained on summarization
    rows = [{"संवाद": f"#Person1#: नमस्ते {i}", "सारांश": f"नमस्ते {i}"} for i in range(5)]
    path = tmp_path / "other.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg = run_config(run, data=str(path))
    examples = load_examples(cfg)
    assert examples.task == "summarization" and len(examples.test_conversations) == 5


def test_the_run_state(tmp_path):
    """finished (metrics.json) > failed (failed.json) > running (a live lock holder here) > unfinished."""
    from unsloth_sft.runs.lock import RunLock, lock_path

    run = make_run(tmp_path, checkpoint=2)
    assert run.state == "unfinished" and run.failure() is None
    with RunLock(run.path):
        assert run.state == "running"
    lock_path(run.path).write_text(json.dumps({"pid": 2**22 + 7, "host": "elsewhere"}))  # left by a killed run
    assert run.state == "unfinished"
    failed = run.mark_failed(
        "RuntimeError: boom", "builtins.RuntimeError", 2, 60, "Traceback ...\nRuntimeError: boom\n"
    )
    assert failed["state"] == "failed" and failed["checkpoint"] == "checkpoint-2"
    assert run.failure() == failed and run.traceback_file.read_text().endswith("boom\n")
    with RunLock(run.path):  # the notebook's kernel still holds it after the failed cell
        assert run.state == "failed"
    run.metrics_file.write_text("{}")
    assert run.state == "finished"


@pytest.mark.parametrize("overwrite", [False, True])
def test_starting_a_failed_run_again_clears_the_mark(tmp_path, overwrite):
    run = make_run(tmp_path, checkpoint=2)
    run.mark_failed("RuntimeError: boom", "builtins.RuntimeError", 2, 60, "Traceback ...")
    resume_from, aside = run.prepare(demo(tmp_path, f"overwrite={str(overwrite).lower()}"))
    assert run.state == "unfinished" and not run.traceback_file.exists()
    assert resume_from == (None if overwrite else run.checkpoints / "checkpoint-2")
    assert aside is None or (aside / "failed.json").is_file()  # the set-aside old run keeps its own record
