"""Data preparation at scale: prepare seconds, rows/s and peak RSS for a generated Hindi-dialogue JSONL of each size,
cold (empty cache) and warm (the same run again).

    .venv/bin/python -m bench.data_scale --rows 10000 100000 1000000

Each measurement runs in a child process of its own (its peak RSS is that process's `ru_maxrss`, imports and the
tokenizer included; `base_rss_mb` is the figure before preparing). "prepare" is `data.examples.prepare` with the tiny
model's tokenizer: read, carve, shape, tokenize and mask, as `unsloth-sft train` does before its first step. The rows
are the bundled sample's dialogues (sample:hindi-dialogsum) re-combined, ~1.3 KB of JSON each, like the measure in
issue 29 (1M rows = 1.3 GB). Writes bench/results/data-scale-DATE.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from bench.common import RESULTS, ROOT


def generate(path: Path, rows: int, seed: int = 0) -> Path:
    """`rows` Hindi dialogues with summaries: the sample's turns re-combined (seeded), each row numbered, so none repeat."""
    from importlib import resources

    folder = Path(str(resources.files("unsloth_sft") / "samples" / "hindi-dialogsum"))
    samples = [json.loads(line) for f in ("train.jsonl", "test.jsonl") for line in (folder / f).open(encoding="utf-8")]
    turns = [t for s in samples for t in s["dialogue"].split("\n") if t.strip()]
    summaries = [s["summary"] for s in samples]
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            dialogue = "\n".join(rng.sample(turns, 6)) + f"\n#Person1#: धन्यवाद, मेरा टिकट नंबर {i} है।"
            f.write(json.dumps({"dialogue": dialogue, "summary": rng.choice(summaries)}, ensure_ascii=False) + "\n")
    return path


def child(source: str, tokenizer_path: str) -> dict:
    """One measurement, in this process: load_examples then tokenizing (prepare), timed, with peak RSS."""
    import resource

    import datasets  # noqa: F401  (imported by any training process before its data: not a preparation cost)
    from transformers import AutoTokenizer

    from unsloth_sft.config.load import load_config
    from unsloth_sft.data.examples import load_examples, prepare

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    cfg = load_config(None, overrides=[f"data.source={source}", "model.max_seq_length=1024"])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu = time.process_time()
    start = time.perf_counter()
    examples = load_examples(cfg)
    read = time.perf_counter() - start
    data = prepare(cfg, tokenizer, examples)
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 2),
        "cpu_s": round(time.process_time() - cpu, 2),  # this process's CPU time: steadier than wall on a shared CPU
        "read_shape_s": round(read, 2),
        "train_examples": len(data.train),
        "test_examples": len(data.test) if data.test is not None else 0,
        "truncated": data.truncated,
        "base_rss_mb": round(base),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def measure(source: Path, cache: Path, tokenizer_path: str) -> dict:
    env = {**os.environ, "UNSLOTH_SFT_CACHE": str(cache), "UNSLOTH_SFT_PROGRESS_S": "60"}
    cmd = [sys.executable, "-m", "bench.data_scale", "--child", str(source), tokenizer_path]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench.data_scale: the measurement failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def table(results: list[dict]) -> str:
    lines = [
        "| rows | file MB | cache MB | cold s | cold CPU s | rows/s | rows per CPU-s | cold peak RSS MB | cold RSS growth MB "
        "| warm s | warm peak RSS MB | warm / cold |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        c, w = r["cold"], r["warm"]
        lines.append(
            f"| {r['rows']:,} | {r['file_mb']:,} | {r['cache_mb']:,} | {c['seconds']} | {c['cpu_s']} | "
            f"{round(r['rows'] / c['seconds']):,} | {round(r['rows'] / c['cpu_s']):,} | {c['peak_rss_mb']:,} | "
            f"{c['peak_rss_mb'] - c['base_rss_mb']:,} | {w['seconds']} | {w['peak_rss_mb']:,} | "
            f"{100 * w['seconds'] / c['seconds']:.1f} % |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.data_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--work", default=None, help="folder for the generated files and caches (default: a temp folder)")
    p.add_argument("--out", default=str(RESULTS / f"data-scale-{date.today().isoformat()}"))
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the tiny model's)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    if args.tokenizer is None:
        from unsloth_sft.models.tiny import tiny_model_path

        args.tokenizer = str(tiny_model_path())
    tokenizer_path = args.tokenizer
    work = Path(args.work or tempfile.mkdtemp(prefix="data-scale-"))
    results = []
    try:
        for rows in args.rows:
            source = generate(work / f"hindi-{rows}.jsonl", rows)
            cache = work / f"cache-{rows}"
            cold, warm = measure(source, cache, tokenizer_path), measure(source, cache, tokenizer_path)
            file_mb = round(source.stat().st_size / 1e6)
            cache_mb = round(sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 1e6)
            results.append({"rows": rows, "file_mb": file_mb, "cache_mb": cache_mb, "cold": cold, "warm": warm})
            print(f"{rows:,} rows ({file_mb} MB): cold {cold}, warm {warm}", flush=True)
            shutil.rmtree(cache, ignore_errors=True)
            source.unlink()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    command = ".venv/bin/python -m bench.data_scale --rows " + " ".join(map(str, args.rows))
    report = {
        "date": date.today().isoformat(),
        "command": command,
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "note": "shared machine: other jobs used the same cores while this ran",
        "results": results,
    }
    from unsloth_sft.core.files import atomic_write_text, write_json

    write_json(args.out + ".json", report)
    md = f"# Data preparation at scale ({report['date']})\n\n`{command}` on {report['cpu']}, {report['cores']} cores "
    md += f"({report['note']}).\n\n{table(results)}\n"
    atomic_write_text(args.out + ".md", md)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
