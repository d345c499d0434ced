"""`unsloth-sft`: the notebook jobs without a notebook. Thin: parse, load config, call the library."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from unsloth_sft.errors import SFTError

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unsloth-sft", description="Supervised fine-tuning with Unsloth, TRL and peft.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_params(name: str, help: str, before: tuple[str, str] | None = None, optional: bool = False):
        s = sub.add_parser(name, help=help)
        if before:  # a positional that comes before PARAMS on the command line
            s.add_argument(before[0], help=before[1])
        s.add_argument("params", nargs="?" if optional else None, help="a params YAML file (see params/)")
        s.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set train.max_steps=5 (repeatable)",
        )
        return s

    with_params("train", "train a model (the training notebook's job)")
    s = with_params(
        "notebook",
        "validate the config, then run a notebook headless with papermill",
        before=("notebook", "notebooks/train.ipynb, evaluate.ipynb or infer.ipynb"),
    )
    s.add_argument("--output", help="executed notebook path (default: RUN_DIR/NOTEBOOK)")
    s = with_params("preview", "print formatted examples with the trained span marked")
    s.add_argument("-n", type=int, default=3, help="how many examples")
    s = with_params("eval", "score the base and the tuned model on a run's test split (or --data)", optional=True)
    s.add_argument("--run", help="run folder (default: output_dir/run_name from the params); its config.yaml is used")
    s.add_argument("--data", help="score on this file instead, every row a test example, shaped as the run's task")
    s = sub.add_parser("infer", help="generate for each line of a JSONL file")
    s.add_argument("--run", help="a run folder: its merged model (or base + adapter), task and template")
    s.add_argument("--model", help="model folder or Hub id (the base, with --adapter)")
    s.add_argument("--adapter", help="LoRA adapter folder (e.g. RUN_DIR/adapter)")
    s.add_argument(
        "--input",
        required=True,
        help='JSONL, one JSON value a line: a "prompt string", {"messages": [...]}, or the dataset\'s columns',
    )
    s.add_argument("--output", required=True, help="JSONL to write")
    s.add_argument("--params", help="params YAML whose template and generation settings to use")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    s = sub.add_parser("export", help="export a finished run: adapter, merged_16bit, Hub push")
    s.add_argument("run_dir", help="the run folder")
    s.add_argument(
        "--method", action="append", default=[], help="lora, merged_16bit, merged_4bit_forced, gguf (repeatable)"
    )
    s.add_argument(
        "--quant",
        metavar="TYPES",
        help="gguf types, comma-separated (default: the run's export.gguf_quant): f16,q8_0 need nothing more; "
        "q4_k_m etc. need llama.cpp's llama-quantize",
    )
    s.add_argument("--push-to-hub", metavar="USER/REPO", help="upload the exported folder (token from HF_TOKEN)")
    s.add_argument("--private", action="store_true", help="create the Hub repo private")
    s.add_argument("--token", help=argparse.SUPPRESS)  # refused below with the reason
    s = sub.add_parser("chat", help="a playground page on 127.0.0.1: base and tuned answer side by side (Gradio)")
    s.add_argument("run_dir", help="a finished run folder (runs/NAME)")
    s.add_argument("--port", type=int, default=7860, help="local port to serve on (default 7860)")
    _sweep_parsers(sub, with_params)
    return p


def _sweep_parsers(sub, with_params) -> None:
    """`sweep` (many variants of one recipe) and `compare` (a leaderboard of runs)."""
    s = with_params("sweep", "train many variants of a recipe (a grid, or --search optuna), then compare them")
    s.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="values of a config key to sweep (repeatable); with --search optuna also LOW:HIGH[:log]",
    )
    s.add_argument("--seeds", type=int, help="repeat every variant with train.seed 1..N")
    s.add_argument("--search", choices=["grid", "optuna"], help="grid (default): every combination; optuna: TPE")
    s.add_argument("--trials", type=int, help="optuna: trials in the study (a rerun runs only the missing ones)")
    s.add_argument("--metric", help="sort (and optimize) by this metric (default eval_loss)")
    s.add_argument("--direction", choices=["auto", "minimize", "maximize"], help="auto: minimize losses")
    s.add_argument("--parallel", type=int, help="variants at once (default 1)")
    s.add_argument("--notebook", help="run each variant through this notebook with papermill (else the CLI path)")
    s.add_argument("--no-eval", dest="evaluate", action="store_false", default=None, help="train only")
    s.add_argument("--out", dest="dir", help="the sweep folder (default OUTPUT_DIR/RUN_NAME-sweep)")
    s = sub.add_parser("compare", help="leaderboard (markdown, CSV) and plots of runs or sweep folders")
    s.add_argument("paths", nargs="+", help="run folders, or folders of runs (a sweep folder)")
    s.add_argument("--metric", help="sort by this metric (default: the sweep's, else eval_loss)")
    s.add_argument("--direction", choices=["auto", "minimize", "maximize"], default="auto")
    s.add_argument("--out", help="where the leaderboard goes (default: the one folder given)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except SFTError as err:
        print(f"unsloth-sft: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("unsloth-sft: interrupted", file=sys.stderr)
        return 130


def _load(params: str, overrides: list[str]):
    """load_config, after a friendlier word for the common slip of passing a data file as the params file."""
    from unsloth_sft.config import load_config
    from unsloth_sft.errors import ConfigError
    from unsloth_sft.sources import SUFFIXES

    if Path(params).suffix in SUFFIXES or Path(params).is_dir():
        raise ConfigError(
            f"{params} looks like a data file, not a params file: train on it with "
            f"`unsloth-sft train params/demo-cpu.yaml --set data.source={params}` "
            f"(in a notebook: -p dataset {params})"
        )
    return load_config(params, overrides)


def _summary(folder) -> None:
    from unsloth_sft.report import run_summary
    from unsloth_sft.runs import RunDir

    print(run_summary(RunDir(folder)))


def _dispatch(args) -> int:
    if args.command == "train":
        from unsloth_sft.pipeline import run_training

        cfg = _load(args.params, args.overrides)
        run_training(cfg)
        if os.environ.get("RANK", "0") == "0":  # one summary per job, not one per process
            _summary(cfg.run_dir)
        return 0
    if args.command == "notebook":
        from unsloth_sft.notebooks import run_notebook

        cfg = _load(args.params, args.overrides)
        out = run_notebook(args.notebook, args.params, args.overrides, args.output)
        print(f"executed notebook: {out}")
        _summary(cfg.run_dir)
        return 0
    if args.command == "preview":
        from unsloth_sft.preview import preview

        print(preview(_load(args.params, args.overrides), n=args.n))
        return 0
    if args.command == "eval":
        from unsloth_sft.evaluate import evaluate_run
        from unsloth_sft.runconfig import run_from_params

        if args.params is not None:
            _load(args.params, args.overrides)  # the data-file check, and a bad params file fails first
        run, cfg = run_from_params(args.params, args.overrides, args.run, args.data)
        report = evaluate_run(cfg, run, data_file=args.data)
        print(report["summary"])
        return 0
    if args.command == "infer":
        return _infer(args)
    if args.command in ("sweep", "compare"):
        return _sweep_or_compare(args)
    if args.command == "export":
        from unsloth_sft.errors import ConfigError
        from unsloth_sft.export import export_run
        from unsloth_sft.runs import RunDir

        if args.token is not None:
            raise ConfigError(
                "--token is refused: a token on the command line lands in shell history and process "
                "lists; set the HF_TOKEN environment variable (or run `huggingface-cli login`)"
            )

        quant = [q.strip() for q in args.quant.split(",") if q.strip()] if args.quant else None
        result = export_run(
            RunDir(args.run_dir), args.method or ["merged_16bit"], args.push_to_hub, args.private, quant=quant
        )
        print(json.dumps(result))
        return 0
    if args.command == "chat":
        from unsloth_sft.playground_ui import serve

        serve(args.run_dir, args.port)
        return 0
    raise AssertionError(args.command)


def _sweep_or_compare(args) -> int:
    """sweep: every variant, then the leaderboard; exit 1 when any variant failed. compare: the leaderboard."""
    from unsloth_sft.compare import compare

    if args.command == "compare":
        board = compare(args.paths, args.metric, args.direction, args.out)
        print(board.markdown)
        print("\n".join(f"{name}: {path}" for name, path in board.files.items()))
        return 0
    from unsloth_sft.sweep import grid_args, load_sweep, run_sweep

    if not Path(args.params).is_dir():
        _load(args.params, args.overrides)  # the data-file check; a bad recipe fails before anything runs
    options = {k: getattr(args, k) for k in ("seeds", "search", "trials", "metric", "direction", "parallel")}
    options.update(notebook=args.notebook, evaluate=args.evaluate, dir=args.dir, grid=grid_args(args.grid))
    sweep = load_sweep(args.params, args.overrides, options)
    outcomes = run_sweep(sweep)
    board = compare([sweep.folder], sweep.spec.metric, sweep.spec.direction)
    print(board.markdown)
    print("\n".join(f"{name}: {path}" for name, path in board.files.items()))
    failed = [o for o in outcomes if o.status == "failed"]
    ran = sum(o.status == "finished" for o in outcomes)
    print(f"sweep {sweep.folder}: {ran} trained, {len(outcomes) - ran - len(failed)} skipped, {len(failed)} failed")
    for o in failed:
        print(f"unsloth-sft: variant {o.name} failed: {o.error}", file=sys.stderr)
    return 1 if failed else 0


def _infer(args) -> int:
    """infer --run RUN (or --model RUN), --model BASE --adapter RUN/adapter, or --model M [--params P]."""
    from unsloth_sft.config import load_config
    from unsloth_sft.errors import ConfigError
    from unsloth_sft.infer import infer_file, run_task
    from unsloth_sft.runconfig import run_config, run_from_params
    from unsloth_sft.runs import RunDir

    model, adapter, task = args.model, args.adapter, None
    if args.run is None and model and (Path(model) / "config.yaml").is_file():
        args.run, model = model, None  # a run folder given as --model: it is one
    if args.run is not None:
        if model or adapter:
            raise ConfigError("--run takes the model from the run folder; leave out --model and --adapter")
        run, cfg = run_from_params(args.params, args.overrides, args.run)
        model, adapter = run.inference_model()
        task = run_task(run, cfg)
    elif model is None:
        raise ConfigError("infer needs --run RUN_DIR, or --model BASE_OR_MERGED (with --adapter for a LoRA adapter)")
    elif adapter and args.params is None and (Path(adapter).parent / "config.yaml").is_file():
        run = RunDir(Path(adapter).parent)  # RUN/adapter: the run's task and template, not the library defaults
        cfg = run_config(run, None, args.overrides)
        task = run_task(run, cfg)
    else:
        cfg = _load(args.params, args.overrides) if args.params else load_config(None, args.overrides)
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


if __name__ == "__main__":
    raise SystemExit(main())
