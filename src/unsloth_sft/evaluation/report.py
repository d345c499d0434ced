"""Reports: the eval folder (predictions, metrics, report.md, chart) and the few lines that end a run."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from unsloth_sft import tasks
from unsloth_sft.core.files import atomic_dir
from unsloth_sft.runs.folder import RunDir


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
    parts = [
        f"# Evaluation of {run_name}",
        f"Task: {result['task']} ({result['template']} template), "
        f"{result['test_examples']} test examples. Greedy decoding, same prompts for base and tuned.",
        table,
    ]
    if result.get("generation"):
        g = result["generation"]
        parts.append(
            f"Generation (tuned, batched): {g['new_tokens']} new tokens in {g['seconds']} s, "
            f"{g['tokens_per_s']} tokens/s."
        )
    for row in rows[:examples]:
        parts.append(
            "---\n**Input**\n\n```\n"
            + row["input"]
            + "\n```\n\n**Reference:** "
            + row["reference"]
            + ("\n\n**Base:** " + row["base"] if row.get("base") is not None else "")
            + "\n\n**Tuned:** "
            + row["tuned"]
        )
    summary = "\n\n".join(parts) + "\n"
    with atomic_dir(Path(folder)) as tmp:
        (tmp / "predictions.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
        (tmp / "metrics.json").write_text(
            json.dumps({k: v for k, v in result.items() if k != "summary"}, indent=2, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        (tmp / "report.md").write_text(summary + "\n![metrics](metrics.png)\n", encoding="utf-8")
        plot_metrics(scores, tmp / "metrics.png", f"{run_name}: base vs tuned")
    return table


def _memory(report: dict) -> str:
    if "gpu_peak_reserved_gb" in report:
        return f"peak GPU memory {report['gpu_peak_reserved_gb']} GB of {report['gpu_total_gb']} GB"
    return f"peak RSS {report.get('peak_rss_mb', '?')} MiB (CPU)"


def run_summary(run: RunDir) -> str:
    """What a run did and where its outputs are, then the commands that come next: a few lines for people."""
    m = run.metrics()
    if m is None:
        return f"{run}: not finished (no {run.metrics_file.name})"
    first, last = m.get("first_loss"), m.get("last_loss")
    loss = f"loss {first:.3f} -> {last:.3f}" if first is not None and last is not None else "no loss logged"
    resumed = f", resumed at step {m['resumed_at_step']}" if m.get("resumed_at_step") is not None else ""
    lines = [
        f"finished {run}: {m.get('steps')} steps in {m.get('runtime_s', 0):.0f} s{resumed}, {loss}, "
        f"{_memory(m.get('memory') or {})}"
    ]
    if m.get("eval_history"):
        last = m["eval_history"][-1]
        lines.append(
            f"eval during training: {len(m['eval_history'])} evaluations, last eval_loss {last['eval_loss']:.4f}"
        )
    if m.get("stopped") and not m["stopped"]["reason"].startswith("reached"):
        lines.append(f"stopped at step {m['stopped']['step']}: {m['stopped']['reason']}")
    best = m.get("best") or {}
    if best.get("step") is not None:
        saved = "saved as the adapter/merged model" if best.get("loaded_at_end") else "the last step was saved"
        lines.append(f"best step {best['step']}: {best['metric']} {best['value']:.4f} ({saved})")
    ev = run.eval_metrics()
    if ev:
        task = tasks.TASKS.get(ev.get("task"))  # the one metric shown; all of them are in eval/ and the table
        name = task.headline if task else "eval_loss"
        v = ev["metrics"].get(name) or ev["metrics"].get("eval_loss") or {}
        lines.append(f"eval: {name} {_fmt(v.get('base'))} -> {_fmt(v.get('tuned'))} (base -> tuned)")
        lines.append(f"on {ev.get('test_examples')} test examples:\n{metrics_table(ev['metrics'])}")
    outputs = [
        (label, path)
        for label, path in (
            ("adapter", run.adapter),
            ("merged", run.merged),
            ("gguf (llama.cpp, Ollama)", run.gguf_dir),
            ("export check", run.export_check_file),
            ("loss curve", run.loss_plot),
            ("eval report", run.eval_dir() / "report.md"),
            ("report (open it in a browser)", run / "report.html"),
        )
        if path.exists()
    ]
    lines += [f"{label}: {path}" for label, path in outputs]
    r = shlex.quote(str(run))
    lines += [
        "next:",
        f"  unsloth-sft eval --run {r}",
        f"  unsloth-sft infer --run {r} --input prompts.jsonl --output answers.jsonl",
        f"  unsloth-sft export {r} --method merged_16bit --push-to-hub USER/REPO",
    ]
    return "\n".join(lines)


def check_table(check: dict[str, Any]) -> str:
    """export_check.json as a Markdown table for model cards and the run summary."""
    rows = [
        "| export | compared with | top-1 agreement | max logit diff | greedy replies equal | verdict |",
        "|---|---|---|---|---|---|",
    ]
    merged = check.get("merged_vs_adapter")
    if merged:
        verdict = "passed" if merged["passed"] else f"FAILED (< {merged['min_agreement']})"
        rows.append(
            f"| merged/ | adapter (unmerged) | {merged['top1_agreement']:.4f} | {merged['max_logit_diff']:.3g} | "
            f"{merged['greedy_equal']}/{merged['prompts']} | {verdict} |"
        )
    for name, g in (check.get("gguf") or {}).items():
        verdict = (
            f"lossy ({g['top1_agreement']:.1%} top-1)" if g["lossy"] else "same top-1 and replies on these prompts"
        )
        rows.append(
            f"| {name} | merged/ | {g['top1_agreement']:.4f} | {g['max_logit_diff']:.3g} | "
            f"{g['greedy_equal']}/{g['prompts']} | {verdict} |"
        )
    return "\n".join(rows)
