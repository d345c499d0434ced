"""Tests for sweeps, the Optuna search and the leaderboard (unsloth_sft.studies, search, variant, compare).

The trainings run the tiny model for one step, each variant in its own process as the sweep runs them; the
sweep itself is called in this process (cli.main). The plan, the names and the config checks train nothing.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from unsloth_sft.app import cli
from unsloth_sft.config.load import load_config
from unsloth_sft.core.errors import ConfigError
from unsloth_sft.studies.compare import compare
from unsloth_sft.studies.spec import SweepConfig, grid_args, grid_variants, load_sweep, run_name, short_value

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# One optimizer step on the tiny model, 8 training rows, 2 generated test examples of 4 tokens: each variant
# costs little more than its process start (the imports).
RECIPE = """\
run_name: t
output_dir: {out}
model:
  name: tiny-gemma2
  backend: transformers
  load_in_4bit: false
  max_seq_length: 768
data:
  source: sample:hindi-dialogsum
  task: summarization
  max_samples: 8
  test_size: 4
train:
  max_steps: 1
  save_steps: 1
  per_device_train_batch_size: 4
  gradient_accumulation_steps: 1
  optim: adamw_torch
  warmup_steps: 0
eval:
  max_new_tokens: 4
  num_examples: 2
export:
  save_methods: [lora]
"""
GRID = ["--grid", "train.learning_rate=1e-3,5e-3", "--grid", "lora.r=4,8"]
NAMES = {"t_lr1e-3_r4", "t_lr1e-3_r8", "t_lr5e-3_r4", "t_lr5e-3_r8"}


def recipe(folder: Path, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(RECIPE.format(out=folder / "runs") + extra, encoding="utf-8")
    return path


def sweep(*args: str) -> int:
    return cli.main(["sweep", *args])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- the plan: names, grids, checks (no training


def test_run_names_are_short_and_readable():
    values = {"train.learning_rate": 2e-4, "lora.r": 16, "train.seed": 1}
    assert run_name("gemma", values) == "gemma_lr2e-4_r16_s1"
    assert short_value(0.001) == "1e-3" and short_value("1e-3") == "1e-3" and short_value(0.5) == "0.5"
    assert short_value(["q_proj", "v_proj"]) == "q-proj+v-proj"  # "_" only between parts
    assert short_value("data/my calls.csv") == "my-calls"


def test_grid_with_seeds_names_only_what_varies():
    spec = SweepConfig(grid={"train.learning_rate": [1e-4, 2e-4], "lora.r": [16]}, seeds=2)
    variants = grid_variants(spec, "g")
    assert [n for n, _ in variants] == ["g_lr1e-4_s1", "g_lr1e-4_s2", "g_lr2e-4_s1", "g_lr2e-4_s2"]
    assert all(v["lora.r"] == 16 for _, v in variants)
    assert [v["train.seed"] for _, v in variants] == [1, 2, 1, 2]


def test_grid_args_parse_lists_and_ranges():
    got = grid_args(["train.learning_rate=1e-4,2e-4", "lora.target_modules=[q_proj],[q_proj,v_proj]", "lora.r=8"])
    assert got["lora.target_modules"] == [["q_proj"], ["q_proj", "v_proj"]]
    assert got["lora.r"] == [8] and len(got["train.learning_rate"]) == 2
    assert grid_args(["train.learning_rate=1e-5:1e-3:log"]) == {"train.learning_rate": "1e-5:1e-3:log"}


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"grid": {"train.learning_rate": "1e-5:1e-3:log"}}, "needs --search optuna"),
        ({"grid": {"train.learning_rate": "1e-5:1e-3"}, "search": "optuna"}, "--trials"),
        ({"grid": {"train.learning_rate": "1e-3:1e-5"}, "search": "optuna", "trials": 2}, "LOW < HIGH"),
        ({"grid": {}}, "sweep.grid is empty"),
        ({"grid": {"lora.r": [8]}, "search": "optuna", "trials": 2, "seeds": 2}, "--seeds"),
    ],
)
def test_bad_sweep_options_are_one_line_errors(tmp_path, options, fragment):
    with pytest.raises(ConfigError) as info:
        load_sweep(str(recipe(tmp_path)), [], options)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_a_value_given_twice_in_a_grid_is_refused_naming_key_and_value(tmp_path, capsys):
    """`--grid train.learning_rate=1e-3,1e-3` would train one variant twice: exit 2, one line, nothing written."""
    path = recipe(tmp_path)
    assert sweep(str(path), "--grid", "train.learning_rate=1e-3,1e-3", "--grid", "lora.r=4,8") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "sweep.grid.train.learning_rate: the value 1e-3 is given twice" in err
    assert sweep(str(path), "--search", "optuna", "--trials", "2", "--grid", "lora.r=4,8,4") == 2  # a choice too
    assert "sweep.grid.lora.r: the value 4 is given twice" in capsys.readouterr().err
    yaml_path = recipe(tmp_path / "y", "sweep:\n  grid:\n    train.learning_rate: [0.001, 1e-3]\n")
    assert sweep(str(yaml_path)) == 2  # the same number written two ways
    assert "the value 0.001 is given twice (as 0.001 and 1e-3)" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "y" / "runs").exists()


def test_sweep_section_has_its_own_schema_and_single_runs_ignore_it(tmp_path):
    path = recipe(tmp_path, "sweep:\n  grid:\n    lora.r: [4, 8]\n  paralel: 2\n")
    with pytest.raises(ConfigError, match="unknown key 'sweep.paralel'; did you mean 'parallel'"):
        load_sweep(str(path), [], {})
    path = recipe(tmp_path, "sweep:\n  grid:\n    lora.r: [4, 8]\n    train.seed: 7\n  metric: rougeL\n")
    assert load_config(path).lora.r == 16  # `unsloth-sft train` on the same file: one run, the recipe's values
    s = load_sweep(str(path), [], {"grid": {"train.learning_rate": [1e-3]}})
    assert s.spec.grid == {"lora.r": [4, 8], "train.seed": [7], "train.learning_rate": [1e-3]}
    assert s.direction == "maximize" and s.folder == tmp_path / "runs" / "t-sweep"


def test_a_sweep_section_without_a_recipe_is_refused(tmp_path, capsys):
    """Every variant would train the library defaults (into runs/demo): the file needs the recipe beside its sweep."""
    path = tmp_path / "only.yaml"
    path.write_text("sweep:\n  grid:\n    lora.r: [4, 8]\n", encoding="utf-8")
    assert sweep(str(path)) == 2
    assert f"{path}: the params file holds only a sweep: section, no recipe" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["only.yaml"]


def test_a_bad_variant_config_stops_the_sweep_before_anything_is_written(tmp_path, capsys):
    path = recipe(tmp_path)
    assert sweep(str(path), "--grid", "lora.r=8,0") == 2
    assert sweep(str(path), "--grid", "train.learnin_rate=1e-3,2e-3") == 2
    assert sweep(str(path), "--search", "optuna", "--trials", "2", "--grid", "lora.alpha=0:8") == 2  # both ends checked
    err = capsys.readouterr().err
    assert "variant t_r0" in err and "lora.r must be >= 1" in err
    assert "unknown key 'train.learnin_rate'; did you mean 'learning_rate'" in err
    assert "variant t_alpha0" in err and "lora.alpha must be >= 1" in err
    assert not (tmp_path / "runs").exists()


def test_compare_needs_runs_and_an_output_for_several_folders(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(ConfigError, match="no run folders"):
        compare([tmp_path / "a"])
    with pytest.raises(ConfigError, match="--out"):
        compare([tmp_path / "a", tmp_path / "b"])


def test_compare_lists_every_status_and_sorts_by_the_metric(tmp_path):
    """Hand-made run folders: finished, trained without eval, failed, unfinished, and a planned variant."""
    from unsloth_sft.config.load import save_config

    folder = tmp_path / "s"

    def run(name: str, lr: float, files: dict[str, dict]) -> None:
        save_config(load_config(None, [f"run_name={name}", f"train.learning_rate={lr}"]), tmp_path / "c.yaml")
        (folder / name).mkdir(parents=True)
        (tmp_path / "c.yaml").rename(folder / name / "config.yaml")
        for rel, data in files.items():
            (folder / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / name / rel).write_text(json.dumps(data), encoding="utf-8")

    train = {"runtime_s": 2.0, "tokens_per_s": 100.0, "memory": {"peak_rss_mb": 600.0}}
    scores = lambda tuned: {"metrics": {"eval_loss": {"base": 3.0, "tuned": tuned}, "rougeL": {"tuned": 0.2}}}  # noqa: E731
    curve = {"history": [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 2.2}]}
    evals = {**curve, "eval": [{"step": 3, "eval_loss": 2.4}]}  # evaluated during training (train.eval_steps)
    best = {**train, "best": {"metric": "eval_loss", "value": 2.4, "step": 3}}
    run("a", 1e-3, {"metrics.json": best, "eval/metrics.json": scores(2.5), "loss_history.json": evals})
    run("b", 2e-3, {"metrics.json": train, "eval/metrics.json": scores(2.1), "loss_history.json": curve})
    run("c", 3e-3, {"metrics.json": train})
    run("d", 4e-3, {"error.json": {"error": "data.source: missing.jsonl not found"}})
    run("e", 5e-3, {})
    (folder / "variants").mkdir()
    save_config(load_config(None, ["run_name=f", "train.learning_rate=0.006"]), folder / "variants" / "f.yaml")
    board = compare([folder])
    assert [(r.name, r.status) for r in board.rows] == [
        ("b", "finished"),
        ("a", "finished"),
        ("c", "trained"),
        ("d", "failed"),
        ("e", "unfinished"),
        ("f", "pending"),
    ]
    assert board.keys == ["train.learning_rate"] and board.direction == "minimize"
    rows = read_csv(folder / "leaderboard.csv")
    assert [r["train.learning_rate"] for r in rows] == ["0.002", "0.001", "0.003", "0.004", "0.005", "0.006"]
    assert rows[0]["eval_loss_base"] == "3" and rows[0]["eval_loss_tuned"] == "2.1" and rows[0]["rougeL_base"] == ""
    assert rows[3]["error"] == "data.source: missing.jsonl not found"
    assert [rows[0]["best_step"], rows[1]["best_step"]] == ["2", "3"]  # lowest training loss; the best evaluation
    assert board.files["loss_curves.png"].stat().st_size > 0 and "metric_vs_keys.png" in board.files
    assert "| [b](b) | finished | 2e-3 | 3 -> 2.1 |" in (folder / "leaderboard.md").read_text(encoding="utf-8")
    assert [r.name for r in compare([folder], metric="rougeL", out=tmp_path / "o").rows][:2] == ["a", "b"]


# ---------------------------------------------------------------- sweeps that train


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    """A 2x2 grid on the tiny model, trained and evaluated once for the tests below."""
    path = recipe(tmp_path_factory.mktemp("grid"))
    code = sweep(str(path), *GRID)
    return code, path.parent / "runs" / "t-sweep"


@pytest.mark.slow
def test_grid_trains_four_runs_and_a_leaderboard_of_the_differing_keys(grid_sweep):
    code, folder = grid_sweep
    assert code == 0
    assert {p.name for p in folder.iterdir() if (p / "metrics.json").is_file()} == NAMES
    assert all((folder / n / "eval" / "metrics.json").is_file() for n in NAMES)
    # what reproduces the sweep: the recipe, the grid, every variant's resolved config
    assert (folder / "recipe.yaml").is_file() and not (folder / ".sweep.lock").exists()  # released, removed
    assert "lora.r" in (folder / "sweep.yaml").read_text()
    assert {p.stem for p in (folder / "variants").glob("*.yaml")} == NAMES
    assert load_config(folder / "variants" / "t_lr5e-3_r8.yaml").train.learning_rate == 0.005
    rows = read_csv(folder / "leaderboard.csv")
    assert len(rows) == 4 and {r["run"] for r in rows} == NAMES
    assert all(r["status"] == "finished" for r in rows)
    settings = [c for c in rows[0] if "." in c and not c.endswith(("_base", "_tuned"))]
    assert sorted(settings) == ["lora.r", "train.learning_rate"]  # only what differs; not train.max_steps etc.
    losses = [float(r["eval_loss_tuned"]) for r in rows]
    assert losses == sorted(losses)  # best (lowest eval loss) first
    assert all(r["eval_loss_base"] for r in rows) and all(r["tokens_per_s"] for r in rows)
    md = (folder / "leaderboard.md").read_text(encoding="utf-8")
    assert md.count("](t_lr") == 4 and " -> " in md  # each row links its run; base -> tuned
    assert (folder / "loss_curves.png").stat().st_size > 0 and (folder / "metric_vs_keys.png").stat().st_size > 0


@pytest.mark.slow
def test_rerun_trains_nothing_and_resumes_an_interrupted_variant(grid_sweep, capsys):
    code, folder = grid_sweep
    assert code == 0
    stamps = {n: (folder / n / "metrics.json").stat().st_mtime_ns for n in NAMES}
    assert sweep(str(folder)) == 0  # the sweep folder alone reproduces the sweep
    assert "0 trained, 4 skipped, 0 failed" in capsys.readouterr().out
    assert {n: (folder / n / "metrics.json").stat().st_mtime_ns for n in NAMES} == stamps
    # a variant that stopped after its last checkpoint, before metrics.json: the rerun resumes it
    interrupted = folder / "t_lr1e-3_r4"
    (interrupted / "metrics.json").unlink()
    assert (interrupted / "checkpoints" / "checkpoint-1").is_dir()
    assert sweep(str(folder)) == 0
    assert "1 trained, 3 skipped, 0 failed" in capsys.readouterr().out
    assert "Resuming from" in (folder / "logs" / "t_lr1e-3_r4.log").read_text(encoding="utf-8")
    assert (interrupted / "metrics.json").is_file()


@pytest.mark.slow
def test_a_failing_variant_is_recorded_and_the_others_finish(tmp_path, capsys):
    path = recipe(tmp_path)
    source = f"data.source=sample:hindi-dialogsum,{tmp_path / 'missing.jsonl'}"
    code = sweep(str(path), "--grid", source, "--parallel", "2")  # both at once: each its own process
    assert code == 1
    folder = tmp_path / "runs" / "t-sweep"
    error = json.loads((folder / "t_data-missing" / "error.json").read_text())
    assert "missing.jsonl" in error["error"] and "\n" not in error["error"]
    assert (folder / "t_data-hindi-dialogsum" / "metrics.json").is_file()
    assert "variant t_data-missing failed" in capsys.readouterr().err
    rows = {r["run"]: r for r in read_csv(folder / "leaderboard.csv")}
    assert rows["t_data-missing"]["status"] == "failed" and "missing.jsonl" in rows["t_data-missing"]["error"]
    assert rows["t_data-hindi-dialogsum"]["status"] == "finished"


@pytest.mark.slow
def test_optuna_runs_three_trials_and_a_rerun_continues_the_study(tmp_path, capsys):
    import optuna

    path = recipe(tmp_path)
    args = ["--search", "optuna", "--trials", "3", "--grid", "train.learning_rate=1e-4:1e-2:log"]
    args += ["--grid", "lora.r=4,8", "--no-eval", "--metric", "train_loss"]
    assert sweep(str(path), *args) == 0
    folder = tmp_path / "runs" / "t-sweep"
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{folder / 'study.db'}")
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(1e-4 <= t.params["train.learning_rate"] <= 1e-2 and t.params["lora.r"] in (4, 8) for t in trials)
    runs = {t.user_attrs["run_name"] for t in trials}
    assert all((folder / n / "metrics.json").is_file() for n in runs) and len(runs) == 3
    assert len(read_csv(folder / "leaderboard.csv")) == 3
    capsys.readouterr()
    assert sweep(str(folder)) == 0  # the stored study already has its 3 trials
    assert "3 trials done, 0 to run" in capsys.readouterr().out
    assert len(optuna.load_study(study_name="sweep", storage=f"sqlite:///{folder / 'study.db'}").trials) == 3


@pytest.mark.slow
def test_a_variant_through_the_training_notebook_keeps_its_executed_notebook(tmp_path):
    path = recipe(tmp_path)
    assert sweep(str(path), "--notebook", str(ROOT / "notebooks/train.ipynb"), "--grid", "lora.r=4") == 0
    run = tmp_path / "runs" / "t-sweep" / "t_r4"
    executed = json.loads((run / "train.ipynb").read_text(encoding="utf-8"))
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in executed["cells"])
    assert (run / "metrics.json").is_file() and (run / "eval" / "metrics.json").is_file()
    assert not list(run.glob(".train.ipynb.tmp-*"))  # papermill's temporary file was renamed into place


@pytest.mark.slow
def test_compare_notebook_renders_the_leaderboard_of_a_sweep(grid_sweep, tmp_path):
    _, folder = grid_sweep
    out = tmp_path / "compare.ipynb"
    subprocess.run(
        [str(BIN / "papermill"), str(ROOT / "notebooks/compare.ipynb"), str(out), "-p", "sweep_dir", str(folder)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    text = json.dumps(json.loads(out.read_text(encoding="utf-8"))["cells"])
    assert "t_lr5e-3_r8" in text and "best by eval_loss" in text and "image/png" in text


def test_compare_descends_into_every_run_below_and_writes_numbers_for_people(tmp_path):
    """compare PARENT finds the runs of sweeps and folders below it, skips what lives inside a run, and writes
    tokens/s as 10,180 (not 1.018e+04) in the markdown and HTML pages, every digit in the CSV."""
    from unsloth_sft.config.load import save_config

    def run(folder: Path, lr: float) -> None:
        folder.mkdir(parents=True)
        save_config(load_config(None, [f"run_name={folder.name}", f"train.learning_rate={lr}"]), folder / "config.yaml")
        (folder / "metrics.json").write_text(json.dumps({"tokens_per_s": 10180.3, "runtime_s": 75.25}))

    run(tmp_path / "sweep-a" / "a1", 1e-3)
    run(tmp_path / "sweep-a" / "a2", 2e-3)
    run(tmp_path / "more" / "sweep-b" / "b1", 3e-3)
    (tmp_path / "sweep-a" / "a1" / "checkpoints" / "checkpoint-2").mkdir(parents=True)  # a run's own parts: not runs
    run(tmp_path / "sweep-a" / ".a1.old-20261204-1", 9e-3)  # a run set aside by an overwrite: hidden, not listed
    board = compare([tmp_path], out=tmp_path / "board")
    assert sorted(r.name for r in board.rows) == ["a1", "a2", "b1"]
    page = (tmp_path / "board" / "leaderboard.md").read_text(encoding="utf-8")
    assert "10,180" in page and "e+04" not in page and "| 75.2 |" in page
    assert read_csv(tmp_path / "board" / "leaderboard.csv")[0]["tokens_per_s"] == "10180.3"
    html = (tmp_path / "board" / "leaderboard.html").read_text(encoding="utf-8")
    assert "<table>" in html and "10,180" in html
