"""The `unsloth-sft` commands, one function each: read the parsed arguments, call the library, print the result.

Each returns the exit status; a bad input raises an `SFTError`, which `cli.main` prints as one line (exit 2).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from unsloth_sft.core.errors import ConfigError


def load_params(params: str, overrides: list[str], command: str = "train"):
    """load_config, after a word that fits the common slips: a run folder or a data file where a recipe goes."""
    from unsloth_sft.config.load import load_config
    from unsloth_sft.data.sources import SUFFIXES

    given = Path(params)
    if (given / "config.yaml").is_file():  # a run folder
        use = {
            "eval": f"unsloth-sft eval --run {params}",
            "preview": f"unsloth-sft preview {given / 'config.yaml'}",
        }.get(command, f"unsloth-sft {command} {given / 'config.yaml'}")
        raise ConfigError(f"{params} is a run folder, not a params file; its recipe is its config.yaml: `{use}`")
    if given.suffix in SUFFIXES or given.is_dir():
        if command == "eval":
            raise ConfigError(
                f"{params} looks like a data file, not a params file: score a run on it with "
                f"`unsloth-sft eval --run RUN_DIR --data {params}`"
            )
        raise ConfigError(
            f"{params} looks like a data file, not a params file (a recipe YAML): `unsloth-sft {command} RECIPE.yaml "
            f"--set data.source={params}` with a recipe from params/ for your task and model (in a notebook: "
            f"-p dataset {params})"
        )
    return load_config(params, overrides)


def print_summary(folder) -> None:
    from unsloth_sft.evaluation.report import run_summary
    from unsloth_sft.runs.folder import RunDir

    print(run_summary(RunDir(folder)))


def train(args) -> int:
    from unsloth_sft.pipeline import run_training

    cfg = load_params(args.params, args.overrides)
    run_training(cfg, recipe=args.params)
    if os.environ.get("RANK", "0") == "0":  # one summary per job, not one per process
        print_summary(cfg.run_dir)
    return 0


def notebook(args) -> int:
    from unsloth_sft.notebooks import run_notebook

    cfg = load_params(args.params, args.overrides, "notebook")
    out = run_notebook(args.notebook, args.params, args.overrides, args.output)  # the cells' output streams
    print(f"executed notebook: {out}")
    report = cfg.run_dir / "report.html"
    if report.is_file():
        print(f"report: {report}")
    return 0


def preview(args) -> int:
    from unsloth_sft.data.preview import preview

    print(preview(load_params(args.params, args.overrides, "preview"), n=args.n))
    return 0


def evaluate(args) -> int:
    from unsloth_sft.evaluation.evaluate import evaluate_run
    from unsloth_sft.runs.config import run_from_params

    if args.params is not None:
        load_params(args.params, args.overrides, "eval")  # the slips above, and a bad params file fails first
    run, cfg = run_from_params(args.params, args.overrides, args.run, args.data)
    if args.gguf:  # the run's GGUFs through llama.cpp (export.quality)
        from unsloth_sft.export.quality import QUALITY_DIR, evaluate_gguf

        print(evaluate_gguf(cfg, run, args.gguf)["table"])
        print(f"written to {run / QUALITY_DIR}")
        return 0
    print(evaluate_run(cfg, run, data_file=args.data)["summary"])
    return 0


def infer(args) -> int:
    from unsloth_sft.evaluation.infer import infer_file, infer_target

    if args.params is not None:
        load_params(args.params, args.overrides, "infer")
    cfg, model, adapter, task = infer_target(args.run, args.model, args.adapter, args.params, args.overrides)
    counts = infer_file(cfg, model, adapter, Path(args.input), Path(args.output), task)
    total = counts["written"] + counts["failed"]
    if counts["failed"]:
        print(
            f"unsloth-sft: {counts['failed']} of {total} input lines failed (listed above); the other "
            f"{counts['written']} were written to {args.output}",
            file=sys.stderr,
        )
        return 1
    print(f"{counts['written']} answers written to {args.output}")
    return 0


def export(args) -> int:
    from unsloth_sft.export.plan import export_run

    if args.token is not None:
        raise ConfigError(
            "--token is refused: a token on the command line lands in shell history and process "
            "lists; set the HF_TOKEN environment variable (or run `huggingface-cli login`)"
        )
    quant = [q.strip() for q in args.quant.split(",") if q.strip()] if args.quant else None
    result = export_run(args.run_dir, args.method or ["merged_16bit"], args.push_to_hub, args.private, quant=quant)
    print(json.dumps(result))
    if result.get("report"):
        from unsloth_sft.evaluation.run_report import report_line

        print(report_line(Path(result["report"])))
    return 0


def chat(args) -> int:
    from unsloth_sft.app.playground_ui import serve

    serve(args.run_dir, args.port)
    return 0


def serve(args) -> int:
    from unsloth_sft.app.serve import serve

    serve(args.run_dir, args.gguf, args.port)
    return 0


def print_leaderboard(board) -> None:
    print(board.markdown)
    print("\n".join(f"{name}: {path}" for name, path in board.files.items()))


def compare(args) -> int:
    from unsloth_sft.studies.compare import compare

    print_leaderboard(compare(args.paths, args.metric, args.direction, args.out))
    return 0


def sweep(args) -> int:
    """Every variant, then the leaderboard; exit 1 when any variant failed."""
    from unsloth_sft.studies.compare import compare
    from unsloth_sft.studies.spec import grid_args, load_sweep
    from unsloth_sft.studies.sweep import run_sweep

    if not Path(args.params).is_dir():
        load_params(args.params, args.overrides, "sweep")  # the slips above; a bad recipe fails before anything runs
    keys = ("seeds", "search", "trials", "metric", "direction", "parallel", "storage", "study")
    options = {k: getattr(args, k) for k in keys}
    options.update(notebook=args.notebook, evaluate=args.evaluate, dir=args.dir, grid=grid_args(args.grid))
    options.update(worker=args.worker)
    spec = load_sweep(args.params, args.overrides, options)
    outcomes = run_sweep(spec)
    if outcomes or not spec.worker:  # a worker that found the study full has no runs of its own to compare
        print_leaderboard(compare([spec.folder], spec.spec.metric, spec.spec.direction))
    failed = [o for o in outcomes if o.status == "failed"]
    ran = sum(o.status == "finished" for o in outcomes)
    print(f"sweep {spec.folder}: {ran} trained, {len(outcomes) - ran - len(failed)} skipped, {len(failed)} failed")
    for o in failed:
        print(f"unsloth-sft: variant {o.name} failed: {o.error}", file=sys.stderr)
    return 1 if failed else 0


COMMANDS = {
    "train": train,
    "notebook": notebook,
    "preview": preview,
    "eval": evaluate,
    "infer": infer,
    "export": export,
    "chat": chat,
    "serve": serve,
    "sweep": sweep,
    "compare": compare,
}
