"""The quality cost of each quantization: a run's GGUFs scored through llama.cpp itself (llama-server) on the test
split `eval` scores, with the task's metrics, beside merged/ through transformers on the same prompts; each with its
size and generation speed. `unsloth-sft eval --run RUN --gguf all` (or `--gguf FILE`); written to RUN/eval-gguf/.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from unsloth_sft import tasks
from unsloth_sft.config.run import RunConfig
from unsloth_sft.core.errors import ConfigError, DataError, RunError
from unsloth_sft.core.files import atomic_dir, read_json
from unsloth_sft.core.progress import Progress, number, size, stage
from unsloth_sft.runs.folder import RunDir

QUALITY_DIR = "eval-gguf"  # RUN/eval-gguf/: quality.json, report.md, predictions-NAME.jsonl
MERGED_ROW = "merged/ (transformers)"


def gguf_files(run: RunDir, given: list[str]) -> list[Path]:
    """`all`: every GGUF in RUN/gguf; else each FILE (a path, or a name in RUN/gguf); a missing one: one line."""
    if given == ["all"]:
        found = sorted(run.gguf_dir.glob("*.gguf"))
        if not found:
            raise RunError(
                f"{run.gguf_dir} has no GGUF file; export one first: `unsloth-sft export {run} --method gguf`"
            )
        return found
    files = []
    for name in given:
        path = Path(name) if Path(name).is_file() else run.gguf_dir / name
        if not path.is_file() or path.suffix != ".gguf":
            raise ConfigError(f"--gguf {name}: no such .gguf file (here or in {run.gguf_dir}); use --gguf all for all")
        files.append(path)
    return files


def sampling(ecfg, ctx: int) -> dict[str, Any]:
    """llama-server's /completion settings for the eval section: greedy unless eval.do_sample, eval's penalty (over
    the whole context, as transformers applies it)."""
    out: dict[str, Any] = {"repeat_penalty": ecfg.repetition_penalty, "repeat_last_n": ctx}
    if ecfg.do_sample:
        out.update(temperature=ecfg.temperature, top_k=ecfg.top_k, top_p=ecfg.top_p, min_p=0.0, seed=0)
    return out


def generate_gguf(gguf: Path, binary: Path, tokenizer, prompts: list[str], cfg: RunConfig) -> tuple[list[str], dict]:
    """(replies, speed) of one GGUF in llama-server: each prompt's token ids (BOS as the prompt carries it), replies
    cut at the run's first stop token and decoded as `eval` decodes; speed from llama.cpp's own timings."""
    from unsloth_sft.export.check import stops, until_stop
    from unsloth_sft.export.llama_cpp import LlamaServer

    stop = stops(tokenizer)
    outs, new_tokens, ms = [], 0, 0.0
    ctx = cfg.model.max_seq_length + cfg.eval.max_new_tokens
    started = time.perf_counter()
    with (
        LlamaServer(gguf, binary, ctx=ctx) as server,
        Progress(len(prompts), f"llama.cpp, {gguf.name}", "example") as bar,
    ):
        for prompt in prompts:
            ids = tokenizer(prompt, add_special_tokens=False).input_ids
            answer = server.complete(ids, cfg.eval.max_new_tokens, sampling(cfg.eval, ctx))
            reply = [t for t in until_stop(answer["tokens"], stop) if t >= 0]
            outs.append(tokenizer.decode(reply, skip_special_tokens=True).strip())
            new_tokens += len(answer["tokens"])
            ms += answer.get("timings", {}).get("predicted_ms", 0.0)
            bar.update(1)
    speed = {
        "new_tokens": new_tokens,
        "seconds": round(time.perf_counter() - started, 2),
        "tokens_per_s": round(new_tokens / (ms / 1000), 1) if ms else None,  # generation alone, one prompt at a time
    }
    return outs, speed


def generate_merged(run: RunDir, prompts: list[str], cfg: RunConfig) -> tuple[list[str], dict]:
    from unsloth_sft.evaluation.generate import generate, generation_speed
    from unsloth_sft.models.load import load_for_inference

    model, tokenizer = load_for_inference(str(run.merged))
    started = time.perf_counter()
    outs = generate(model, tokenizer, prompts, cfg.eval, desc="transformers, merged/")
    return outs, generation_speed(tokenizer, outs, time.perf_counter() - started)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def quality_table(rows: dict[str, dict]) -> str:
    """| model | file size | metric ... | tokens/s |: one row per scored model."""
    names = list(dict.fromkeys(m for r in rows.values() for m in r["metrics"]))
    lines = [
        "| model | size | " + " | ".join(names) + " | tokens/s |",
        "|---|---:|" + "---:|" * len(names) + "---:|",
    ]
    for label, r in rows.items():
        cells = [f"{r['metrics'][m]:.4f}" if m in r["metrics"] else "" for m in names]
        lines.append(f"| {label} | {size(r['bytes'])} | {' | '.join(cells)} | {number(r['tokens_per_s'])} |")
    return "\n".join(lines)


def evaluate_gguf(cfg: RunConfig, run: RunDir | Path, given: list[str], merged: bool = True) -> dict[str, Any]:
    """Score merged/ (transformers) and each GGUF (llama.cpp) on the test examples `eval` scores; RUN/eval-gguf/."""
    from transformers import AutoTokenizer

    from unsloth_sft.data.examples import has_test, load_examples, prepare
    from unsloth_sft.data.prompts import prompts_for
    from unsloth_sft.evaluation.evaluate import capped
    from unsloth_sft.export.runtime import ensure_server
    from unsloth_sft.runs.lock import locked

    run = RunDir.of(run)
    if cfg.data.task == "auto" and run.task:
        cfg = cfg.with_task(run.task)
    files = gguf_files(run, given)
    with locked(run.path):
        run.check_writable()
        stage(1, 4, "read the test data", "eval --gguf")
        examples = load_examples(cfg)
        record = tasks.get(examples.task)
        if record.metrics is None:
            raise ConfigError(f"{run}: a {examples.task} run has no generation metric; eval --gguf scores generations")
        if not has_test(examples, cfg):
            raise DataError("the test split is empty; set data.test_size (e.g. 0.1) or data.test_split")
        tokenizer = AutoTokenizer.from_pretrained(run.merged if run.has_merged else run.adapter)
        data = prepare(cfg, tokenizer, examples)
        convs = capped(cfg, data)[1][: cfg.eval.num_examples]
        references = [c[-1]["content"] for c in convs]
        prompts = prompts_for(tokenizer, convs, data.template)
        stage(2, 4, "llama.cpp's llama-server (built once on first use)", "eval --gguf")
        binary = ensure_server(build=True)
        rows: dict[str, dict] = {}
        predictions: dict[str, list[str]] = {}
        if merged and run.has_merged:
            stage(3, 4, f"merged/ through transformers on {len(prompts)} test examples", "eval --gguf")
            outs, speed = generate_merged(run, prompts, cfg)
            rows[MERGED_ROW] = {"bytes": folder_bytes(run.merged), **speed}
            predictions[MERGED_ROW] = outs
        stage(4, 4, f"{len(files)} GGUF file(s) through llama.cpp on {len(prompts)} test examples", "eval --gguf")
        for gguf in files:
            outs, speed = generate_gguf(gguf, binary, tokenizer, prompts, cfg)
            rows[gguf.name] = {"bytes": gguf.stat().st_size, **speed}
            predictions[gguf.name] = outs
        for label, outs in predictions.items():
            rows[label]["metrics"] = record.metrics(outs, references)
        result = {
            "task": data.task,
            "template": data.template,
            "test_examples": len(prompts),
            "decoding": "sampled" if cfg.eval.do_sample else "greedy",
            "max_new_tokens": cfg.eval.max_new_tokens,
            "models": rows,
        }
        result["table"] = quality_table(rows)
        write_quality(run.path / QUALITY_DIR, cfg.run_name, result, prompts, references, predictions)
        return result


def write_quality(folder: Path, run_name: str, result: dict, prompts, references, predictions: dict) -> None:
    """RUN/eval-gguf/ atomically: quality.json (earlier files' rows kept when scored on the same examples),
    report.md with the table, and one predictions-NAME.jsonl per model."""
    old = read_json(folder / "quality.json") or {}
    if old.get("test_examples") == result["test_examples"] and old.get("task") == result["task"]:
        kept = {k: v for k, v in old.get("models", {}).items() if k not in result["models"]}
        result["models"] = {**kept, **result["models"]}
        result["table"] = quality_table(result["models"])
    with atomic_dir(folder) as tmp:
        if folder.is_dir():  # the kept rows' predictions come along
            for path in folder.glob("predictions-*.jsonl"):
                (tmp / path.name).write_bytes(path.read_bytes())
        (tmp / "quality.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        report = (
            f"# Quantization quality of {run_name}\n\nTask: {result['task']} ({result['template']} template), "
            f"{result['test_examples']} test examples, {result['decoding']} decoding, at most "
            f"{result['max_new_tokens']} new tokens. GGUF files through llama.cpp's llama-server, merged/ through "
            f"transformers; tokens/s: generation speed.\n\n{result['table']}\n"
        )
        (tmp / "report.md").write_text(report, encoding="utf-8")
        for label, outs in predictions.items():
            name = "merged" if label == MERGED_ROW else Path(label).stem
            rows = [{"input": p, "reference": r, "output": o} for p, r, o in zip(prompts, references, outs)]
            (tmp / f"predictions-{name}.jsonl").write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
            )
