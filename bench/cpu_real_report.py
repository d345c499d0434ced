"""The real-model CPU benchmark's tables: MFU against the measured matmul peak, speed relative to plain TRL, the
targets, and the markdown of bench/results/cpu-real.md."""

from __future__ import annotations

from bench.common import fmt, markdown_table

LOSS_TOLERANCE = 0.01  # "the same loss": the pipeline's held-out loss at most this much (nats/token) above TRL's
RSS_TARGET_MB = 3e9 / 2**20  # 3 GB (decimal), in MiB: 2,861

COLUMNS = [
    ("variant", "variant", 0),
    ("dtype", "dtype", 0),
    ("tokens_per_cpu_s", "useful tok/CPU-s", 1),
    ("vs_trl_cpu", "x TRL (CPU)", 2),
    ("tokens_per_s", "useful tok/s", 1),
    ("vs_trl", "x TRL", 2),
    ("padding_pct", "padding %", 1),
    ("logits_pct", "logits at % of tokens", 0),
    ("cpu_s_per_step", "CPU s/step", 1),
    ("recomputes", "layers recomputed", 0),
    ("gflops_per_cpu_s", "GFLOP/CPU-s", 1),
    ("mfu_pct", "MFU %", 1),
    ("last_loss", "train loss, last step", 3),
    ("eval_loss_after", "held-out loss after", 3),
    ("peak_rss_mb", "peak RSS MiB", 0),
    ("time_to_first_step_s", "to 1st step s", 0),
    ("steps", "steps", 0),
]
PIPELINES = ("pipeline-unsloth", "pipeline")  # "this pipeline": what backend auto picks here, and transformers


def best_peaks(measurements: list[dict]) -> dict:
    """Per dtype, the measurement with the most GFLOP per CPU second (a peak is the best the cores did)."""
    out: dict = {}
    for m in measurements:
        for dtype, v in (m or {}).items():
            if (
                isinstance(v, dict)
                and v.get("gflops_per_cpu_s")
                and (dtype not in out or v["gflops_per_cpu_s"] > out[dtype]["gflops_per_cpu_s"])
            ):
                out[dtype] = v
    return out


def add_ratios(rows: list[dict], peaks: dict) -> None:
    """MFU against the measured peak of each row's dtype; speed relative to plain TRL by wall clock and CPU time."""
    by = {r["variant"]: r for r in rows}
    trl = by.get("trl")
    for r in rows:
        r["padding_pct"] = 100 * r["padding_fraction"] if r.get("padding_fraction") is not None else None
        r["logits_pct"] = 100 * r["logits_fraction"] if r.get("logits_fraction") is not None else None
        forwards = r.get("layer_forwards_per_step")
        r["recomputes"] = forwards > 1.5 if forwards is not None else None  # gradient checkpointing at work
        peak = peaks.get(r.get("dtype"), {}).get("gflops_per_cpu_s")
        r["peak_gflops_per_cpu_s"] = peak
        r["mfu"] = round(r["gflops_per_cpu_s"] / peak, 4) if peak and r.get("gflops_per_cpu_s") else None
        r["mfu_pct"] = 100 * r["mfu"] if r["mfu"] is not None else None
        for clock, key in (("", "tokens_per_s"), ("_cpu", "tokens_per_cpu_s")):
            ok = trl and trl.get(key) and r.get(key)
            r["vs_trl" + clock] = round(r[key] / trl[key], 3) if ok else None


def targets(rows: list[dict]) -> dict:
    """The targets for each pipeline row: >= 2x plain TRL's useful tok/CPU-s at the same held-out loss
    (at most LOSS_TOLERANCE above TRL's after the same steps), and peak RSS <= 3 GB."""
    by = {r["variant"]: r for r in rows}
    trl = by.get("trl")
    out: dict = {}
    for name in PIPELINES:
        r = by.get(name)
        if r is None:
            continue
        t = {"vs_trl": r.get("vs_trl"), "vs_trl_cpu": r.get("vs_trl_cpu"), "peak_rss_mb": r.get("peak_rss_mb")}
        t["speed_met"] = None if r.get("vs_trl_cpu") is None else r["vs_trl_cpu"] >= 2.0
        mine, theirs = r.get("eval_loss_after"), (trl or {}).get("eval_loss_after")
        t["eval_loss"], t["trl_eval_loss"] = mine, theirs
        t["loss_met"] = None if mine is None or theirs is None else mine <= theirs + LOSS_TOLERANCE
        t["rss_met"] = None if r.get("peak_rss_mb") is None else r["peak_rss_mb"] <= RSS_TARGET_MB
        t["all_met"] = bool(t["speed_met"] and t["loss_met"] and t["rss_met"])
        if by.get("trl-no-checkpointing", {}).get("tokens_per_cpu_s") and r.get("tokens_per_cpu_s"):
            t["vs_trl_no_checkpointing_cpu"] = round(
                r["tokens_per_cpu_s"] / by["trl-no-checkpointing"]["tokens_per_cpu_s"], 3
            )
        out[name] = t
    full, pipe = by.get("pipeline-full-logits"), by.get("pipeline")
    if full and pipe and full.get("tokens_per_cpu_s") and pipe.get("tokens_per_cpu_s"):
        out["trained_positions_speedup_cpu"] = round(pipe["tokens_per_cpu_s"] / full["tokens_per_cpu_s"], 3)
    return out


def _met(flag) -> str:
    return "not measured" if flag is None else ("met" if flag else "NOT met")


def render_markdown(results: dict) -> str:
    st, peaks = results["settings"], results.get("peaks", {})
    rows = results["rows"]
    ref = next((r for r in rows if r.get("total_params")), {})
    lines = [
        f"# CPU benchmark, real model: {results['model']} ({results['device']})",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Recipe `{st['recipe']}`: max_seq_length {st['max_seq_length']}, LoRA r {st['lora_r']} / alpha "
        f"{st['lora_alpha']} on {', '.join(st['target_modules'])}, batch {st['batch']}, {st['optim']}, learning rate "
        f"{st['learning_rate']} ({st['lr_scheduler_type']}, no warm-up), seed {st['seed']}. Every variant trains on "
        f"the same first {st['examples']} training examples (one pass: {st['warmup_steps']} untimed + "
        f"{st['timed_steps']} timed optimizer steps) and is scored on the same {st['eval_examples']} held-out "
        f"examples (completion-only loss, `evaluation.loss.eval_loss`; the base model, where every variant starts: "
        f"{fmt((results.get('base_eval') or {}).get('eval_loss'), 3)}). {st['torch_threads']} torch thread(s) per worker "
        "process, one process per variant. Useful tokens = non-padding tokens of the timed steps; `tok/CPU-s` "
        "divides by the worker's CPU seconds (robust to other jobs on the cores).",
        "",
    ]
    measured = results.get("peak_measurements") or []
    if peaks:
        parts = []
        for dtype, v in peaks.items():
            each = " / ".join(fmt((m or {}).get(dtype, {}).get("gflops_per_cpu_s"), 1) for m in measured)
            parts.append(f"{dtype} **{v['gflops_per_cpu_s']:.1f}** GFLOP/CPU-s (before / after the variants: {each})")
        first = next(iter(peaks.values()))
        lines += [
            f"Matmul peak measured here (torch.mm {first['size']} x {first['size']}, best of {first['reps']}, "
            f"{first['threads']} thread(s)): " + "; ".join(parts) + ". A row's MFU is its model GFLOP per CPU "
            "second over the peak of the dtype most of its parameters have.",
            "",
        ]
    if ref:
        lines += [
            f"## {results['model']}: {ref['total_params']:,} parameters ({ref['nonembed_params']:,} non-embedding "
            f"with LoRA, {ref['trainable_params']:,} trainable; vocabulary {ref['vocab']:,} x hidden {ref['hidden']})",
            "",
        ]
    lines += [markdown_table(rows, COLUMNS), ""]
    failed = results.get("failed") or []
    if failed:
        lines += [f"Failed (see the worker logs): {', '.join(failed)}.", ""]
    t = results.get("targets") or {}
    for name in PIPELINES:
        g = t.get(name)
        if not g:
            continue
        rss = g["peak_rss_mb"]
        lines.append(
            f"Targets, `{name}`: {fmt(g['vs_trl_cpu'], 2)}x plain TRL's useful tok/CPU-s (wall clock "
            f"{fmt(g['vs_trl'], 2)}x; target >= 2: {_met(g['speed_met'])}"
            + (
                f"; {g['vs_trl_no_checkpointing_cpu']:.2f}x TRL without checkpointing"
                if "vs_trl_no_checkpointing_cpu" in g
                else ""
            )
            + f"), held-out loss {fmt(g['eval_loss'], 3)} vs TRL's {fmt(g['trl_eval_loss'], 3)} after the same steps "
            f"(same loss: at most {LOSS_TOLERANCE} above; {_met(g['loss_met'])}), peak RSS {fmt(rss, 0)} MiB = "
            f"{fmt(rss * 2**20 / 1e9 if rss else None, 2)} GB (target <= 3 GB: {_met(g['rss_met'])})."
        )
        lines.append("")
    if "trained_positions_speedup_cpu" in t:
        lines += [
            f"Trained-position logits alone (`pipeline` over `pipeline-full-logits`, CPU time): "
            f"{t['trained_positions_speedup_cpu']:.2f}x.",
            "",
        ]
    lines += [
        "Model FLOPs per timed step = 2 x forward (backward ~= one forward: activation gradients through frozen "
        "weights, no weight gradients but LoRA's); forward = 2 x non-embedding parameters (LoRA included) per useful "
        "token + 2 x vocab x hidden per useful position whose logits are computed. Attention scores and padding are "
        "not counted. `logits at % of tokens`: those positions over useful tokens.",
        "",
        f"Total benchmark wall time: {results['wall_s']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"
