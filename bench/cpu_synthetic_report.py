"""The synthetic CPU benchmark's tables: speed ratios, the targets, and the markdown of bench/results/cpu.md."""

from __future__ import annotations

from bench.common import fmt, markdown_table

TRAIN_COLUMNS = [
    ("variant", "variant", 0),
    ("tokens_per_s", "useful tok/s", 0),
    ("vs_naive", "x naive", 2),
    ("vs_trl", "x TRL", 2),
    ("tokens_per_cpu_s", "useful tok/CPU-s", 0),
    ("vs_naive_cpu", "x naive (CPU)", 2),
    ("vs_trl_cpu", "x TRL (CPU)", 2),
    ("padding_pct", "padding %", 1),
    ("supervised_per_s", "loss tok/s", 0),
    ("pass_s", "pass s", 1),
    ("time_to_first_step_s", "to 1st step s", 1),
    ("prep_s", "prep s", 2),
    ("prep_pct_of_run", "prep % of run", 1),
    ("peak_rss_mb", "peak RSS MiB", 0),
    ("steps", "steps", 0),
]
PREP_COLUMNS = [
    ("mode", "data preparation", 0),
    ("examples", "examples", 0),
    ("seconds", "wall s", 2),
    ("cpu_seconds", "CPU s", 2),
    ("examples_per_s", "examples/s", 0),
    ("examples_per_cpu_s", "examples/CPU-s", 0),
]


def add_ratios(rows: list[dict]) -> None:
    """Each row's speed relative to the naive and plain-TRL rows, by wall clock and by CPU time."""
    by = {r["variant"]: r for r in rows}
    for r in rows:
        r["padding_pct"] = 100 * r["padding_fraction"] if r.get("padding_fraction") is not None else None
        for ref, key in (("naive", "vs_naive"), ("trl", "vs_trl")):
            base = by.get(ref)
            r[key] = round(r["tokens_per_s"] / base["tokens_per_s"], 3) if base else None
            r[key + "_cpu"] = round(r["tokens_per_cpu_s"] / base["tokens_per_cpu_s"], 3) if base else None


def prep_rows(prep: dict) -> list[dict]:
    modes = [
        ("uncached", "uncached: unsloth_sft.data.tokenize (render + tokenize + label masks)"),
        ("render_only", "  part (warm): chat-template rendering, prompts.render"),
        ("tokenizer_only", "  part (warm): tokenizer call, batched, with offsets"),
        ("labels_loop", "  part (warm): label masks, Python loop over offsets"),
        ("cached", "cached: hash inputs + datasets.load_from_disk (not in the library)"),
    ]
    rows = []
    for key, label in modes:
        wall, cpu = prep.get(f"{key}_s"), prep.get(f"{key}_cpu_s")
        n = prep.get("parts_examples", prep["examples"]) if "part" in label else prep["examples"]
        rows.append(
            {
                "mode": label,
                "examples": n,
                "seconds": wall,
                "cpu_seconds": cpu,
                "examples_per_s": n / wall if wall else None,
                "examples_per_cpu_s": n / cpu if cpu else None,
            }
        )
    return rows


def targets(rows: list[dict]) -> dict:
    """The targets for one model: pipeline >= 2x naive useful tok/s, >= 1.0x plain TRL, prep < 5 % of the run."""
    by = {r["variant"]: r for r in rows}
    pipe = [r for r in rows if r["variant"].startswith("pipeline")]
    if not pipe:
        return {}
    best = max(pipe, key=lambda r: r["tokens_per_cpu_s"])
    out = {"best_pipeline_variant": best["variant"]}
    for name, r in (("defaults", by.get("pipeline")), ("best", best)):
        if r is None:
            continue
        for clock in ("", "_cpu"):
            if r.get("vs_naive" + clock) is not None:
                out[f"{name}_vs_naive{clock}"] = r["vs_naive" + clock]
                out[f"{name}_vs_naive{clock}_met"] = r["vs_naive" + clock] >= 2.0
            if r.get("vs_trl" + clock) is not None:
                out[f"{name}_vs_trl{clock}"] = r["vs_trl" + clock]
                out[f"{name}_vs_trl{clock}_met"] = r["vs_trl" + clock] >= 1.0
        out[f"{name}_prep_pct_of_run"] = r["prep_pct_of_run"]
        out[f"{name}_prep_met"] = r["prep_pct_of_run"] < 5.0
    return out


def render_markdown(results: dict) -> str:
    lines = [f"# CPU benchmark ({results['device']})", "", f"Command: `{results['command']}`", ""]
    st = results.get("settings")
    if st:
        lines += [
            f"Same examples for every variant of a model, one epoch, batch {st['per_device_train_batch_size']} x "
            f"accumulation {st['gradient_accumulation_steps']}, max_length {st['max_length']}, LoRA {st['lora']}, "
            f"{st['dtype']}, {st['optim']}, gradient checkpointing on, {st['torch_threads']} torch thread(s) per worker "
            "process. Useful tokens = non-padding tokens; `tok/CPU-s` divides by the worker's CPU seconds instead of "
            "wall seconds (robust to other jobs sharing the cores). Loss tokens = tokens whose label is not -100.",
            "",
        ]
    for model, block in results["models"].items():
        rows = block["rows"]
        lines += [
            f"## {model}: {block['total_params']:,} parameters ({block['trainable_params']:,} trainable LoRA), "
            f"{block['examples']} examples, {block['real_tokens']:,} tokens, one pass",
            "",
            markdown_table(rows, TRAIN_COLUMNS),
            "",
        ]
        t = block.get("targets") or {}
        if t:
            g = lambda k, t=t: fmt(t.get(k), 2)
            lines.append(
                f"Targets (wall clock / CPU time): `pipeline` {g('defaults_vs_naive')} / {g('defaults_vs_naive_cpu')}x "
                f"naive (target >= 2), {g('defaults_vs_trl')} / {g('defaults_vs_trl_cpu')}x plain TRL (target >= 1); "
                f"fastest pipeline variant by CPU time `{t['best_pipeline_variant']}`: {g('best_vs_naive')} / "
                f"{g('best_vs_naive_cpu')}x naive, {g('best_vs_trl')} / {g('best_vs_trl_cpu')}x TRL; data preparation "
                f"{g('defaults_prep_pct_of_run')} % of the `pipeline` run (target < 5)."
            )
            lines.append("")
    if results.get("prep"):
        lines += [
            "## Data preparation (format + tokenize, tiny tokenizer)",
            "",
            markdown_table(prep_rows(results["prep"]), PREP_COLUMNS),
            "",
        ]
    lines.append(f"Total benchmark wall time: {results['wall_s']:.0f} s.")
    return "\n".join(lines) + "\n"
