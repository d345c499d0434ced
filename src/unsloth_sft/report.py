"""Evaluation outputs: predictions.jsonl, metrics.json, report.md and a bar chart, written as one folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unsloth_sft.runs import atomic_dir


def _fmt(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else ("" if x is None else str(x))


def metrics_table(scores: dict[str, dict]) -> str:
    """A markdown table: metric | base | tuned | delta."""
    lines = ["| metric | base | tuned | delta |", "|---|---:|---:|---:|"]
    for name, v in scores.items():
        delta = v.get("delta")
        sign = "+" if isinstance(delta, float) and delta > 0 else ""
        lines.append(f"| {name} | {_fmt(v.get('base'))} | {_fmt(v.get('tuned'))} | {sign}{_fmt(delta)} |")
    return "\n".join(lines)


def plot_metrics(scores: dict[str, dict], path: Path, title: str) -> None:
    """Grouped bars, base vs tuned, one group per metric (losses and perplexity are on their own scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, v in scores.items() if isinstance(v.get("tuned"), (int, float)) and v["tuned"] == v["tuned"]]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names) + 2), 3.5), dpi=100)
    xs = range(len(names))
    base = [scores[n].get("base") or 0.0 for n in names]
    tuned = [scores[n]["tuned"] for n in names]
    ax.bar([x - 0.2 for x in xs], base, width=0.4, label="base")
    ax.bar([x + 0.2 for x in xs], tuned, width=0.4, label="tuned")
    ax.set_xticks(list(xs), names, rotation=20)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_eval(folder: Path, run_name: str, result: dict, rows: list[dict], examples: int = 3) -> str:
    """Write the eval folder atomically; returns the markdown summary (table + examples)."""
    scores = result["metrics"]
    table = metrics_table(scores)
    parts = [f"# Evaluation of {run_name}", f"Task: {result['task']} ({result['template']} template), "
             f"{result['test_examples']} test examples. Greedy decoding, same prompts for base and tuned.", table]
    for row in rows[:examples]:
        parts.append(
            "---\n**Input**\n\n```\n" + row["input"] + "\n```\n\n**Reference:** " + row["reference"]
            + ("\n\n**Base:** " + row["base"] if row.get("base") is not None else "")
            + "\n\n**Tuned:** " + row["tuned"]
        )
    summary = "\n\n".join(parts) + "\n"
    with atomic_dir(Path(folder)) as tmp:
        (tmp / "predictions.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
        (tmp / "metrics.json").write_text(json.dumps({k: v for k, v in result.items() if k != "summary"},
                                                     indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(summary + "\n![metrics](metrics.png)\n", encoding="utf-8")
        plot_metrics(scores, tmp / "metrics.png", f"{run_name}: base vs tuned")
    return table
