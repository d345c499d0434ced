"""A run's report to look at: `RUN/report.md` and the same page as `RUN/report.html` (markdown-it), made from what
the run folder holds: what changed from its recipe, the environment, training (loss curve, speed, memory), base
against tuned with deltas and examples side by side, and the exports with their sizes and check. Written when
training finishes, and again after `eval` and `export`, so it always shows what the folder holds now."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from unsloth_sft.core.files import atomic_write_text, read_json
from unsloth_sft.core.progress import duration, number, size
from unsloth_sft.evaluation.report import check_table, metrics_table
from unsloth_sft.runs.folder import RunDir

EXAMPLES = 3  # test examples shown side by side
STYLE = """body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1f2328}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #d0d7de;padding:.25rem .6rem;vertical-align:top}
th{background:#f6f8fa}img{max-width:100%}code,pre{background:#f6f8fa;border-radius:4px}pre{padding:.6rem;
overflow-x:auto;white-space:pre-wrap}h1,h2{border-bottom:1px solid #d0d7de;padding-bottom:.2rem}"""


def cell(text) -> str:
    """A value inside a markdown table cell: one line, pipes escaped."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", "<br>")


def table(rows: list[tuple], header: tuple) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def recipe_section(env: dict) -> str:
    recipe = env.get("recipe") or {}
    if recipe.get("path"):
        where = f"`{recipe['path']}`"
    elif recipe.get("sections"):
        where = "the recipe's sections given to papermill with -f"
    else:
        where = "the library defaults (no params file named)"
    changes = recipe.get("changes") or []
    rows = [
        (c["key"], json.dumps(c["recipe"], ensure_ascii=False), json.dumps(c["run"], ensure_ascii=False))
        for c in changes
    ]
    body = table(rows, ("key", "recipe", "this run")) if rows else "The run is the recipe as written."
    return (
        f"## Recipe\n\nFrom {where}; what this run changed (`--set`, notebook parameters, resolved values):\n\n{body}"
    )


def training_section(run: RunDir, m: dict) -> str:
    memory = m.get("memory") or {}
    peak = (
        f"{memory['gpu_peak_reserved_gb']} GB GPU (reserved)"
        if "gpu_peak_reserved_gb" in memory
        else f"{number(memory.get('peak_rss_mb'))} MiB RSS (CPU)"
    )
    rows = [
        ("steps", f"{m.get('steps')} ({m.get('steps_this_run')} in this process)"),
        ("runtime", duration(m.get("runtime_s"))),
        ("speed", f"{number(m.get('tokens_per_s'))} tokens/s"),
        ("effective batch", f"{m.get('effective_batch_size')} ({m.get('processes')} process(es))"),
        ("loss", f"{number(m.get('first_loss'))} → {number(m.get('last_loss'))} (min {number(m.get('min_loss'))})"),
        ("peak memory", peak),
        ("trainable", f"{number(m.get('trainable_params'))} of {number(m.get('total_params'))} parameters"),
        ("stopped", (m.get("stopped") or {}).get("reason", "")),
    ]
    best = m.get("best") or {}
    if best.get("step") is not None:
        rows.append(("best step", f"{best['step']}: {best['metric']} {number(best['value'])}"))
    parts = ["## Training", table(rows, ("", ""))]
    if run.loss_plot.is_file():
        parts.append(f"![loss curve]({run.loss_plot.name})")
    return "\n\n".join(parts)


def eval_section(run: RunDir) -> str:
    ev = run.eval_metrics()
    if not ev:
        return f"## Evaluation\n\nNot evaluated yet: `unsloth-sft eval --run {run}`."
    parts = [
        "## Evaluation: base → tuned",
        f"{ev.get('test_examples')} test examples of {ev.get('data')}, {ev.get('task')} task, {ev.get('template')} "
        "template; greedy decoding, the same prompts for base and tuned.",
        metrics_table(ev["metrics"]),
    ]
    if (run.eval_dir() / "metrics.png").is_file():
        parts.append("![base vs tuned](eval/metrics.png)")
    g = ev.get("generation")
    if g:
        parts.append(f"Generation (tuned, batched): {number(g['tokens_per_s'])} new tokens/s.")
    predictions = run.eval_dir() / "predictions.jsonl"
    if predictions.is_file():
        rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()[:EXAMPLES] if line]
        if rows:
            parts.append("### Examples side by side")
            shown = [
                (tail(r.get("input", "")), r.get("reference", ""), r.get("base") or "", r.get("tuned", ""))
                for r in rows
            ]
            parts.append(table(shown, ("input (its end)", "reference", "base", "tuned")))
    return "\n\n".join(parts)


def tail(text: str, n: int = 600) -> str:
    """The last ~n characters from a word's start: a cut inside a word (or a Devanagari syllable) reads as noise."""
    if len(text) <= n:
        return text
    cut = text[-n:]
    space = re.search(r"\s", cut)
    return "… " + (cut[space.end() :] if space else cut)


def export_section(run: RunDir) -> str:
    rows = [
        (name, size(folder_size(run / name)))
        for name in ("adapter", "merged", "gguf", "merged_4bit_forced")
        if (run / name).is_dir()
    ]
    if run.gguf_dir.is_dir():
        rows += [(f"gguf/{f.name}", size(f.stat().st_size)) for f in sorted(run.gguf_dir.glob("*.gguf"))]
    parts = ["## Exports", table(rows, ("folder or file", "size")) if rows else "Nothing exported yet."]
    check = read_json(run.export_check_file)
    if check:
        parts.append("### Export check\n\n" + check_table(check))
    return "\n\n".join(parts)


def environment_section(env: dict) -> str:
    packages = env.get("packages") or {}
    rows = [("python", env.get("python")), ("device", env.get("device"))]
    rows += [(k, env[k]) for k in ("cpu", "cpu_flags", "compute_dtype") if env.get(k)]
    rows += [(name, version) for name, version in packages.items() if version]
    source = env.get("model_source") or {}
    if source:
        rows.append(("base model", f"{source.get('base_model')} from GGUF sha256 {source.get('sha256', '')[:16]}..."))
    return "## Environment\n\n" + table(rows, ("", ""))


def report_markdown(run: RunDir) -> str:
    m, env = run.metrics() or {}, read_json(run.environment_file) or {}
    cfg = run.saved_config() or {}
    state = "finished" if run.is_finished else "not finished (no metrics.json)"
    head = (
        f"# {cfg.get('run_name', run.path.name)}\n\n{(cfg.get('model') or {}).get('name')} on "
        f"{(cfg.get('data') or {}).get('source') or 'a mix of sources'} ({(cfg.get('data') or {}).get('task')} task), "
        f"{cfg.get('finetune')}; {state}. Folder: `{run}`."
    )
    parts = [head, recipe_section(env)]
    if m:
        parts.append(training_section(run, m))
    parts += [eval_section(run), export_section(run), environment_section(env)]
    return "\n\n".join(parts) + "\n"


def to_html(markdown: str, title: str) -> str:
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n"
    )


def report_line(report: Path) -> str:
    """The line a command ends with: where its run's page is."""
    return f"report (open it in a browser): {report}"


def write_run_report(run: RunDir | str | Path) -> Path:
    """RUN/report.md and RUN/report.html, as the folder is now; returns the HTML's path."""
    run = RunDir.of(run)
    text = report_markdown(run)
    atomic_write_text(run / "report.md", text)
    atomic_write_text(run / "report.html", to_html(text, f"unsloth-sft: {run.path.name}"))
    return run / "report.html"
