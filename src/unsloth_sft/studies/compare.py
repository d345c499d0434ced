"""Compare runs: a leaderboard (markdown + CSV) of the config keys that differ and what each run measured, plus plots.

`compare(["runs/demo-sweep"])` reads run folders (a sweep folder, any folder of runs, or single runs), and writes
`leaderboard.md`, `leaderboard.csv`, `loss_curves.png` and `metric_vs_keys.png` into the output folder.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from unsloth_sft.config.diff import flatten
from unsloth_sft.core.errors import ConfigError
from unsloth_sft.core.files import atomic_file, atomic_write_text, read_json
from unsloth_sft.core.progress import number
from unsloth_sft.evaluation.run_report import to_html
from unsloth_sft.runs.folder import ERROR, RunDir
from unsloth_sft.runs.folder import VARIANT_WALL as WALL
from unsloth_sft.studies.spec import LOGS, SWEEP, VARIANTS, direction_of, short_value

# Keys every run has its own value of: never what tells two variants apart.
NOT_SETTINGS = ("run_name", "output_dir", "overwrite")


@dataclasses.dataclass
class Row:
    name: str
    path: Path
    status: str  # finished | trained (no eval) | failed | running | unfinished | pending
    config: dict[str, Any]  # flattened resolved config
    eval: dict[str, dict]  # eval/metrics.json "metrics": name -> {base, tuned}
    train: dict[str, Any]  # metrics.json
    wall_s: float | None = None
    error: str | None = None
    best_step: int | None = None


@dataclasses.dataclass
class Leaderboard:
    rows: list[Row]
    keys: list[str]  # the config keys that differ between the rows
    metric: str
    direction: str
    markdown: str
    files: dict[str, Path]


def _json(path: Path) -> dict:
    return read_json(path) or {}


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def metric_value(run: RunDir, metric: str) -> float | None:
    """The tuned value of an eval metric (eval/metrics.json), else a number in metrics.json (tokens_per_s...)."""
    ev = run.eval_metrics() or {}
    value = (ev.get("metrics") or {}).get(metric, {}).get("tuned")
    if value is None:
        value = (run.metrics() or {}).get(metric)
    return float(value) if is_number(value) else None


def read_row(path: Path, planned: Path | None = None) -> Row:
    """What one run folder holds (or, for a planned variant that never started, its resolved config)."""
    import yaml

    run = RunDir(path)
    saved = run.saved_config()
    if saved is None and planned is not None and planned.is_file():
        saved = yaml.safe_load(planned.read_text(encoding="utf-8"))
    train, ev = run.metrics() or {}, (run.eval_metrics() or {}).get("metrics") or {}
    error = _json(path / ERROR).get("error")
    state = run.state
    if error or state == "failed":  # a sweep variant's error.json, or training crashed (failed.json)
        status = "failed"
        error = error or (run.failure() or {}).get("error")
    elif state == "finished":
        status = "finished" if ev else "trained"
    elif state == "running":
        status = "running"
    else:
        status = "unfinished" if run.config_file.is_file() else "pending"
    history = _json(run.loss_history).get("history") or []
    # the best evaluation during training (train.eval_steps), else the step of the lowest training loss
    best = (train.get("best") or {}).get("step")
    if best is None and history:
        best = min(history, key=lambda h: h["loss"])["step"]
    wall = _json(path / WALL).get("wall_s")
    return Row(path.name, path, status, flatten(saved or {}), ev, train, wall, error, best)


SWEEP_PARTS = (LOGS, VARIANTS)  # a sweep folder's own: its trials' logs, its planned configs


def run_folders(given: Path) -> list[tuple[Path, Path | None]]:
    """(run folder, its planned config or None) for every run at any depth below `given`: sweeps inside sweeps,
    several workers' folders, a folder of folders, whatever they are named (`logs/r3`, `evaluation-sweep/r1`);
    planned sweep variants that never started too. A run folder's own parts (checkpoints, adapter, eval, ...), a
    sweep folder's logs and variants, and hidden folders (a run set aside) are not searched."""
    if (given / "config.yaml").is_file() or (given / ERROR).is_file():
        return [(given, None)]
    sweep = (given / VARIANTS).is_dir()
    found: list[tuple[Path, Path | None]] = []
    for child in sorted(p for p in given.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (sweep and child.name in SWEEP_PARTS):
            found += run_folders(child)
    if sweep:  # its variants, planned ones included
        planned = {p.stem: p for p in sorted((given / VARIANTS).glob("*.yaml"))}
        found = [(f, planned.get(f.name) if f.parent == given else c) for f, c in found]
        found += [(given / name, path) for name, path in planned.items() if not (given / name).is_dir()]
    return found


def find_rows(paths: list[str | Path]) -> list[Row]:
    """Runs in the given folders and every folder below them (`run_folders`)."""
    rows: dict[Path, Row] = {}
    for given in map(Path, paths):
        if not given.is_dir():
            raise ConfigError(f"{given}: not a folder; give run folders or a sweep folder (e.g. runs/demo-sweep)")
        found = run_folders(given)
        if not found:
            raise ConfigError(f"{given}: no run folders here (none holds config.yaml); train first, or pick another")
        for folder, planned in found:
            rows.setdefault(folder.resolve(), read_row(folder, planned))
    return list(rows.values())


def differing_keys(rows: list[Row]) -> list[str]:
    """Config keys whose value is not the same in every row (a key a row lacks counts as differing)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row.config if k not in keys and k not in NOT_SETTINGS]
    with_config = [r for r in rows if r.config]
    return [k for k in keys if len({json.dumps(r.config.get(k), sort_keys=True) for r in with_config}) > 1]


def _sort(rows: list[Row], metric: str, direction: str) -> list[Row]:
    sign = 1 if direction == "minimize" else -1

    def key(row: Row):
        value = metric_value(RunDir(row.path), metric)
        return (value is None, sign * value if value is not None else 0.0, row.name)

    return sorted(rows, key=key)


def _num(x: Any) -> str:
    """A number for people: 10,180 not 1.018e+04, 0.344 not 0.34403 (the CSV keeps every digit)."""
    return number(x) if is_number(x) else ""


def _raw(x: Any) -> str:
    return f"{x:.10g}" if isinstance(x, float) and is_number(x) else ("" if x is None else str(x))


def _memory(train: dict) -> str:
    mem = train.get("memory") or {}
    if "gpu_peak_reserved_gb" in mem:
        return f"{mem['gpu_peak_reserved_gb']} GB GPU"
    return f"{mem['peak_rss_mb']:.0f} MiB RSS" if is_number(mem.get("peak_rss_mb")) else ""


def table(rows: list[Row], keys: list[str], out: Path) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """(header, markdown cells, CSV cells): one row per run; eval metrics as base -> tuned (CSV: two columns)."""
    names: list[str] = []
    for row in rows:
        names += [n for n in row.eval if n not in names]
    header = ["run", "status", *keys, *names, "best step", "tokens/s", "peak memory", "train s", "wall s", "error"]
    csv_header = ["run", "status", *keys]
    for n in names:
        csv_header += [f"{n}_base", f"{n}_tuned"]
    csv_header += ["best_step", "tokens_per_s", "peak_memory", "train_s", "wall_s", "error", "path"]
    md, flat = [], []
    for r in rows:
        settings = [short_value(r.config[k]) if k in r.config else "" for k in keys]
        both = [(r.eval.get(n) or {}) for n in names]
        pairs = [f"{_num(v.get('base'))} -> {_num(v.get('tuned'))}" if v else "" for v in both]
        t = r.train
        tail = [_num(r.best_step), _num(t.get("tokens_per_s")), _memory(t), _num(t.get("runtime_s")), _num(r.wall_s)]
        link = os.path.relpath(r.path, out)
        md.append([f"[{r.name}]({link})", r.status, *settings, *pairs, *tail, (r.error or "").replace("|", "\\|")])
        values = [x for v in both for x in (_raw(v.get("base")), _raw(v.get("tuned")))]
        tail_raw = [
            _raw(r.best_step),
            _raw(t.get("tokens_per_s")),
            _memory(t),
            _raw(t.get("runtime_s")),
            _raw(r.wall_s),
        ]
        raw = [r.config.get(k, "") for k in keys]  # full values for analysis: 0.0005, not 5e-4
        raw = [short_value(v) if isinstance(v, (list, dict)) else v for v in raw]
        flat.append([r.name, r.status, *raw, *values, *tail_raw, r.error or "", link])
    return header, md, [csv_header, *flat]


def plot_losses(rows: list[Row], path: Path) -> bool:
    """Training loss curves overlaid (solid), eval loss during training where a run has it (dashed), and each run's
    final eval loss (tuned) as a cross at its last step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [(r, _json(RunDir(r.path).loss_history)) for r in rows]
    curves = [(r, c["history"], c.get("eval") or []) for r, c in curves if c.get("history")]
    if not curves:
        return False
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for row, history, evals in curves:
        (line,) = ax.plot(
            [h["step"] for h in history], [h["loss"] for h in history], label=row.name, alpha=0.8, marker="."
        )
        if evals:
            steps, losses = [h["step"] for h in evals], [h.get("eval_loss") for h in evals]
            ax.plot(steps, losses, linestyle="--", marker="o", markersize=3, color=line.get_color(), alpha=0.8)
        tuned = (row.eval.get("eval_loss") or {}).get("tuned")
        if is_number(tuned):
            ax.plot([history[-1]["step"]], [tuned], "x", color=line.get_color(), markersize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (solid: train; dashed: eval; x: final eval, tuned)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    _save(fig, path)
    return True


def plot_metric(rows: list[Row], keys: list[str], metric: str, path: Path) -> bool:
    """The metric against each differing key, one panel per key (log x for positive values spanning 10x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r, metric_value(RunDir(r.path), metric)) for r in rows]
    points = [(r, v) for r, v in points if v is not None]
    keys = [k for k in keys if any(k in r.config for r, _ in points)]
    if not points or not keys:
        return False
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), dpi=100, squeeze=False)
    for ax, key in zip(axes[0], keys):
        xs = [r.config.get(key) for r, _ in points]
        ys = [v for _, v in points]
        numeric = all(is_number(x) for x in xs)
        if numeric:
            ax.scatter(xs, ys)
            if min(xs) > 0 and max(xs) / min(xs) >= 10:
                ax.set_xscale("log")
        else:
            labels = sorted({short_value(x) for x in xs})
            ax.scatter([labels.index(short_value(x)) for x in xs], ys)
            ax.set_xticks(range(len(labels)), labels, rotation=20)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{metric} (tuned) against each swept key")
    _save(fig, path)
    return True


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def sweep_metric(paths: list[str | Path]) -> tuple[str | None, str]:
    """The metric and direction a sweep folder was run with (sweep.yaml), when one is given."""
    import yaml

    for given in map(Path, paths):
        if (given / SWEEP).is_file():
            spec = (yaml.safe_load((given / SWEEP).read_text(encoding="utf-8")) or {}).get("sweep") or {}
            return spec.get("metric"), spec.get("direction") or "auto"
    return None, "auto"


def compare(
    paths: list[str | Path], metric: str | None = None, direction: str = "auto", out: str | Path | None = None
) -> Leaderboard:
    """Write leaderboard.md/.csv and the plots for these runs into `out` (default: the one folder given)."""
    if not paths:
        raise ConfigError("compare needs run folders or a sweep folder")
    if out is None and len(paths) > 1:
        raise ConfigError("comparing several folders: say where the leaderboard goes with --out DIR")
    rows = find_rows(paths)
    saved_metric, saved_direction = sweep_metric(paths)
    metric = metric or saved_metric or "eval_loss"
    direction = direction_of(metric, direction if direction != "auto" else saved_direction)
    out = Path(out if out is not None else paths[0])
    out.mkdir(parents=True, exist_ok=True)
    rows = _sort(rows, metric, direction)
    keys = differing_keys(rows)
    header, md, flat = table(rows, keys, out)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(flat)
    files = {"leaderboard.md": out / "leaderboard.md", "leaderboard.csv": out / "leaderboard.csv"}
    if plot_losses(rows, out / "loss_curves.png"):
        files["loss_curves.png"] = out / "loss_curves.png"
    if plot_metric(rows, keys, metric, out / "metric_vs_keys.png"):
        files["metric_vs_keys.png"] = out / "metric_vs_keys.png"
    better = "lower" if direction == "minimize" else "higher"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in md]
    markdown = (
        f"{len(rows)} runs, sorted by {metric} (tuned; {better} is better); only the config keys that differ "
        f"({', '.join(keys) or 'none'}); eval metrics base -> tuned.\n\n" + "\n".join(lines) + "\n"
    )
    images = "".join(f"\n![{p.stem}]({p.name})\n" for n, p in files.items() if n.endswith(".png"))
    page = f"# Leaderboard\n\n{markdown}{images}"
    atomic_write_text(files["leaderboard.md"], page)
    atomic_write_text(files["leaderboard.csv"], buffer.getvalue())
    files["leaderboard.html"] = out / "leaderboard.html"  # the same page as the run reports, for a browser
    atomic_write_text(files["leaderboard.html"], to_html(page, f"unsloth-sft: {len(rows)} runs"))
    return Leaderboard(rows, keys, metric, direction, markdown, files)
