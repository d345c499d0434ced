"""A run that crashes while training says so: failed.json, the traceback in the run folder, one line naming both;
a known compile crash names the switch that avoids it; a rerun clears the mark."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.conftest import small_config
from unsloth_sft.core.errors import DataError, SFTError, TrainingFailed
from unsloth_sft.runs.folder import RunDir
from unsloth_sft.training.loop import fit_or_explain, training_failed


def crash_on_step(step: int, monkeypatch) -> None:
    """Make the pipeline's trainer raise at the start of `step` (1-based), as a CUDA or compile error would."""
    from transformers import TrainerCallback

    from unsloth_sft import pipeline

    class Crash(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step + 1 == step:
                raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")

    build = pipeline.build_trainer

    def build_crashing(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.add_callback(Crash())
        return trainer

    monkeypatch.setattr(pipeline, "build_trainer", build_crashing)


@pytest.mark.slow
def test_a_crash_while_training_marks_the_run_failed_and_a_rerun_clears_it(tmp_path, monkeypatch):
    from unsloth_sft import pipeline

    cfg = small_config(tmp_path, "model.backend=transformers", "train.save_steps=1", "train.max_steps=4")
    run = RunDir(cfg.run_dir)
    crash_on_step(3, monkeypatch)
    with pytest.raises(TrainingFailed) as err:
        pipeline.run_training(cfg)
    message = str(err.value)
    assert message == (
        "training failed after 2 of 4 steps: RuntimeError: CUDA error: an illegal memory access was encountered; "
        f"traceback: {run.traceback_file}"
    )
    assert err.value.__cause__ is None and isinstance(err.value.__context__, RuntimeError)  # kept, not shown
    failed = json.loads(run.failed_file.read_text())
    assert failed["state"] == "failed" and failed["step"] == 2 and failed["max_steps"] == 4
    assert failed["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert failed["type"] == "builtins.RuntimeError" and failed["checkpoint"] == "checkpoint-2"
    assert failed["traceback"] == str(run.traceback_file)
    text = run.traceback_file.read_text()
    assert text.startswith("Traceback (most recent call last):") and "on_step_begin" in text and "more detail" in text
    assert run.state == "failed" and not run.is_finished

    monkeypatch.undo()  # the rerun resumes from checkpoint-2 and finishes
    metrics = pipeline.run_training(cfg)
    assert metrics["resumed_at_step"] == 2 and metrics["steps"] == 4
    assert run.state == "finished" and not run.failed_file.exists() and not run.traceback_file.exists()


def fake_trainer(tmp_path, step: int = 0, raises: BaseException | None = None):
    def train(resume_from_checkpoint=None):
        raise raises

    args = SimpleNamespace(output_dir=str(tmp_path / "run" / "checkpoints"))
    return SimpleNamespace(args=args, state=SimpleNamespace(global_step=step, max_steps=12), train=train)


class InductorError(RuntimeError):
    """torch._inductor.exc.InductorError, as the unsloth backend raised it on torch 2.11 + CUDA."""


def decompose_triton_kernel_wrapper_functional():
    raise InductorError("AssertionError: \n\nSet TORCHDYNAMO_VERBOSE=1 for the internal stack trace")


def test_a_known_compile_crash_names_the_switch(tmp_path, monkeypatch):
    for var in ("UNSLOTH_BNB_NF4_LINEAR", "UNSLOTH_BLOCK_COMPILE", "UNSLOTH_COMPILE_DISABLE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(InductorError) as caught:
        decompose_triton_kernel_wrapper_functional()
    crash = caught.value
    message = str(training_failed(fake_trainer(tmp_path), crash))
    assert message.startswith("training failed after 0 of 12 steps: InductorError: AssertionError (")
    assert "set UNSLOTH_BNB_NF4_LINEAR=0" in message and "pytorch#181735" in message
    assert message.endswith(f"; traceback: {tmp_path / 'run' / 'traceback.txt'}") and "\n" not in message
    run = RunDir(tmp_path / "run")
    assert run.failure()["error"] == "InductorError: AssertionError" and run.state == "failed"
    assert "decompose_triton_kernel_wrapper_functional" in run.traceback_file.read_text()
    monkeypatch.setenv("UNSLOTH_BNB_NF4_LINEAR", "0")  # what the library sets on torch 2.11: the next switch
    assert "set UNSLOTH_BLOCK_COMPILE=0" in str(training_failed(fake_trainer(tmp_path), crash))


def test_a_bad_input_during_training_stays_itself_and_marks_nothing(tmp_path):
    trainer = fake_trainer(tmp_path, raises=DataError("row 3: empty answer"))
    with pytest.raises(DataError, match="row 3"):
        fit_or_explain(trainer, None, RunDir(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_crash_becomes_training_failed(tmp_path):
    trainer = fake_trainer(tmp_path, step=5, raises=ValueError("x" * 400))
    with pytest.raises(TrainingFailed) as err:
        fit_or_explain(trainer, None, RunDir(tmp_path / "run"))
    assert isinstance(err.value, SFTError)  # one line, as every error of the library's
    assert "after 5 of 12 steps: ValueError: xxx" in str(err.value) and "..." in str(err.value)
    assert len(RunDir(tmp_path / "run").failure()["error"]) == 300


def test_interrupting_training_is_not_a_failure(tmp_path):
    trainer = fake_trainer(tmp_path, raises=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        fit_or_explain(trainer, None, RunDir(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # a rerun resumes it: not failed
