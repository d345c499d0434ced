"""The export plan (export.plan): what is saved, in which order, from a live model or a saved run, and what it
refuses before any work. The savers are replaced by recorders here; tests/export/test_export.py runs them for real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import small_config
from unsloth_sft.core.errors import ConfigError, ModelError, RunError
from unsloth_sft.export import plan
from unsloth_sft.runs.folder import RunDir


@pytest.fixture
def calls(monkeypatch):
    """Every saver the plan calls, in order, with the folder it writes (each writes a marker the next one sees)."""
    done: list[tuple[str, str]] = []

    def saver(name, marker):
        def record(*args, **kwargs):
            target = Path([a for a in args if isinstance(a, Path)][-1])
            done.append((name, target.name))
            target.mkdir(parents=True, exist_ok=True)
            (target / marker).write_text("{}")
            return target

        return record

    monkeypatch.setattr(plan, "save_adapter", saver("save_adapter", "adapter_config.json"))
    monkeypatch.setattr(plan, "save_full", saver("save_full", "config.json"))
    monkeypatch.setattr(plan, "merge_adapter", saver("merge_adapter", "config.json"))
    monkeypatch.setattr(plan, "write_card", lambda folder, text, cfg: done.append(("card", Path(folder).name)))
    monkeypatch.setattr(plan, "verify", lambda run, cfg, methods, *a: done.append(("verify", ",".join(methods))) or {})
    monkeypatch.setattr(
        plan,
        "push_folder",
        lambda folder, repo, private, path_in_repo=None: (
            done.append(("push", Path(folder).name, repo, path_in_repo)) or f"https://hub/{repo}/commit/{len(done)}"
        ),
    )
    monkeypatch.setattr(plan, "check_gguf_tools", lambda cfg: None)
    monkeypatch.setattr("unsloth_sft.models.sources.resolve_model_path", lambda name: f"/base/{name}")
    return done


def live():
    return plan.Live(model=object(), tokenizer=object(), backend="transformers", base_path="/base/tiny")


def saved_run(tmp_path: Path, adapter: bool = True, merged: bool = False) -> RunDir:
    run = RunDir(tmp_path / "run")
    for folder, marker, present in (("adapter", "adapter_config.json", adapter), ("merged", "config.json", merged)):
        if present:
            (run / folder).mkdir(parents=True)
            (run / folder / marker).write_text(json.dumps({}))
    return run


def test_training_saves_the_adapter_then_merges_then_checks_then_pushes(tmp_path, calls):
    cfg = small_config(tmp_path, "export.save_methods=[lora, merged_16bit]")
    out = plan.export(RunDir(cfg.run_dir), cfg, ["lora", "merged_16bit"], live(), push_to_hub="me/repo")
    assert calls == [
        ("save_adapter", "adapter"),
        ("merge_adapter", "merged"),
        ("card", "adapter"),
        ("card", "merged"),
        ("verify", "lora,merged_16bit"),
        ("push", "merged", "me/repo", None),  # both were asked for: the merged model at the top, the adapter beside
        ("push", "adapter", "me/repo", "adapter"),
    ]
    assert set(out) == {"lora", "merged_16bit", "hub", "hub_merged_16bit", "hub_lora"}
    assert out["hub"] == out["hub_merged_16bit"]


def test_training_a_full_fine_tune_saves_merged_and_no_adapter(tmp_path, calls):
    cfg = small_config(tmp_path, "finetune=full", "export.save_methods=[merged_16bit]")
    out = plan.export(RunDir(cfg.run_dir), cfg, ["merged_16bit"], live())
    assert [c for c in calls if c[0] != "card"] == [("save_full", "merged"), ("verify", "merged_16bit")]
    assert set(out) == {"merged_16bit"}


def test_gguf_after_training_merges_the_fresh_adapter_again(tmp_path, calls):
    """A merged/ left by an interrupted earlier attempt is stale once training saved a new adapter."""
    cfg = small_config(tmp_path, "run_name=run", "export.save_methods=[lora, gguf]")
    run = saved_run(tmp_path, adapter=True, merged=True)
    plan.export(run, cfg, cfg.export.save_methods, live())
    assert ("merge_adapter", "merged") in calls


def test_gguf_of_a_saved_run_reuses_its_merged_folder(tmp_path, calls):
    run = saved_run(tmp_path, adapter=True, merged=True)
    plan.export(run, small_config(tmp_path, "run_name=run"), ["gguf"])
    assert calls == [("verify", "gguf")]


def test_merged_of_a_saved_run_is_merged_from_its_adapter(tmp_path, calls):
    run = saved_run(tmp_path, adapter=True, merged=True)
    out = plan.export(run, small_config(tmp_path, "run_name=run"), ["merged_16bit"])
    assert calls[0] == ("merge_adapter", "merged") and out["merged_16bit"] == str(run.merged)


@pytest.mark.parametrize(
    "methods, adapter, merged, error, match",
    [
        (["lora", "nope"], True, False, ConfigError, "--method nope: not one of lora, merged_16bit"),
        (["lora"], False, True, ModelError, "no adapter/ in this run"),
        (["merged_16bit"], False, False, ModelError, "neither adapter/ nor merged/ here"),
        (["lora", "merged_4bit_forced"], True, False, RunError, "merged_4bit_forced needs the unsloth backend"),
    ],
)
def test_a_saved_run_refuses_before_any_work(tmp_path, calls, methods, adapter, merged, error, match):
    run = saved_run(tmp_path, adapter, merged)
    with pytest.raises(error, match=match):
        plan.export(run, small_config(tmp_path, "run_name=run"), methods)
    assert calls == []


def test_training_refuses_unsloths_4bit_save_off_a_gpu_before_training(tmp_path):
    """The pipeline asks check_methods at its first stage, with the backend it will use."""
    cfg = small_config(tmp_path, "export.save_methods=[lora, merged_4bit_forced]")
    with pytest.raises(RunError, match=r"unsloth backend on a CUDA GPU.*\(here: transformers backend"):
        plan.check_methods(cfg.export.save_methods, cfg, backend="transformers")


@pytest.mark.parametrize(
    "methods, made, pushed",
    [
        # `export RUN --method gguf --push-to-hub`: the GGUF folder, not the adapter or the merge it was made from
        (["gguf"], {"merged_16bit": "m", "gguf": "g"}, [("gguf", "g", "me/repo", None)]),
        (["lora"], {"lora": "a"}, [("lora", "a", "me/repo", None)]),
        (["merged_16bit"], {"merged_16bit": "m"}, [("merged_16bit", "m", "me/repo", None)]),
        # weights and GGUF both asked for: the GGUF files in a repo of their own, the Hub's convention
        (["lora", "gguf"], {"lora": "a", "merged_16bit": "m", "gguf": "g"},
         [("lora", "a", "me/repo", None), ("gguf", "g", "me/repo-GGUF", None)]),
        # a full fine-tune has no adapter: its trained weights are merged/
        (["lora"], {"merged_16bit": "m"}, [("merged_16bit", "m", "me/repo", None)]),
        (["lora", "merged_16bit"], {"lora": "a", "merged_16bit": "m"},
         [("merged_16bit", "m", "me/repo", None), ("lora", "a", "me/repo", "adapter")]),
    ],
)  # fmt: skip
def test_a_push_uploads_what_was_asked_for_and_nothing_else(methods, made, pushed):
    from unsloth_sft.export.hub import push_plan

    assert push_plan(methods, made, "me/repo") == pushed


def test_a_gguf_export_of_a_saved_run_pushes_the_gguf_folder(tmp_path, calls, monkeypatch):
    cfg = small_config(tmp_path, "run_name=run")
    run = saved_run(tmp_path, adapter=True)
    monkeypatch.setattr(plan, "verify", lambda run, cfg, methods, *a: {"gguf": str(run / "gguf")})
    out = plan.export(run, cfg, ["gguf"], push_to_hub="me/repo")
    assert [c for c in calls if c[0] == "push"] == [("push", "gguf", "me/repo", None)]
    assert out["hub"] == out["hub_gguf"]
