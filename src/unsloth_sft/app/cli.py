"""`unsloth-sft`: the notebook jobs without a notebook. The parser is here; each command is one function in
`commands` (parse, load config, call the library)."""

from __future__ import annotations

import argparse
import sys

from unsloth_sft.app.commands import COMMANDS
from unsloth_sft.core.allocator import tune_cpu
from unsloth_sft.core.errors import SFTError, TrainingFailed
from unsloth_sft.core.files import write_problem
from unsloth_sft.core.procs import terminate_as_interrupt
from unsloth_sft.core.quiet import quiet_terminal

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1  # training crashed (not the input's fault): the run folder holds failed.json and the traceback


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unsloth-sft", description="Supervised fine-tuning with Unsloth, TRL and peft.")
    verbose = "also show what the libraries print (their warnings, progress bars and the Trainer's log dicts)"
    p.add_argument("--verbose", action="store_true", help=verbose)
    common = argparse.ArgumentParser(add_help=False)  # --verbose after the command too
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose)
    sub = p.add_subparsers(dest="command", required=True)
    add_parser = sub.add_parser
    sub.add_parser = lambda name, **kwargs: add_parser(name, parents=[common], **kwargs)

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
    s.add_argument(
        "--gguf",
        action="append",
        metavar="FILE",
        help="score GGUF files through llama.cpp instead (a path, a name in RUN/gguf, or `all`), beside merged/ "
        "through transformers: quality, size and tokens/s per quantization, in RUN/eval-gguf/ (repeatable)",
    )
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
        "--method",
        action="append",
        default=[],
        help="lora, merged_16bit, merged_4bit_forced, gguf, lora_gguf (repeatable)",
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
    s = sub.add_parser("serve", help="llama.cpp's OpenAI-compatible server on 127.0.0.1 for a run's GGUF")
    s.add_argument("run_dir", help="a run folder with a GGUF export (runs/NAME)")
    s.add_argument("--gguf", help="which GGUF (a path or a name in RUN/gguf; default: q8_0, else f16, else another)")
    s.add_argument("--port", type=int, default=8080, help="local port to serve on (default 8080)")
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
    s.add_argument(
        "--storage",
        metavar="URL",
        help="optuna: the study's Optuna storage, postgresql://USER:${VAR}@HOST/DB, mysql+pymysql://..., "
        "sqlite:///PATH or journal:PATH (${VAR} from the environment; default: study.db in the sweep folder)",
    )
    s.add_argument("--study", help="optuna: the study's name in --storage (default RUN_NAME-sweep)")
    s.add_argument(
        "--worker",
        action="store_true",
        help="one of many sweep processes (any machines) pulling trials from the study in --storage, "
        "each training into its own --out folder",
    )
    s = sub.add_parser("compare", help="leaderboard (markdown, CSV) and plots of runs or sweep folders")
    s.add_argument("paths", nargs="+", help="run folders, or folders of runs (a sweep folder)")
    s.add_argument("--metric", help="sort by this metric (default: the sweep's, else eval_loss)")
    s.add_argument("--direction", choices=["auto", "minimize", "maximize"], default="auto")
    s.add_argument("--out", help="where the leaderboard goes (default: the one folder given)")


def main(argv: list[str] | None = None) -> int:
    tune_cpu()  # glibc malloc and the thread count, before anything loads torch (core/allocator.py)
    args = parser().parse_args(argv)
    quiet_terminal(args.verbose)  # our progress and errors only, unless --verbose
    try:
        with terminate_as_interrupt():  # SIGTERM cleans up as Ctrl-C does: temporary files, children, the lock
            return COMMANDS[args.command](args)
    except TrainingFailed as err:
        print(f"unsloth-sft: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except SFTError as err:
        print(f"unsloth-sft: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("unsloth-sft: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a full disk where another library writes on its own: one line, not a traceback
        if write_problem(err) is None:
            raise
        print(f"unsloth-sft: error: cannot write ({write_problem(err)}); free some space and rerun", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    raise SystemExit(main())
