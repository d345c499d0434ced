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

    def with_params(name: str, help: str, before: tuple[str, str] | None = None) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help)
        if before:  # a positional that comes before PARAMS on the command line
            s.add_argument(before[0], help=before[1])
        s.add_argument("params", help="a params YAML file (see params/)")
        s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set train.max_steps=5 (repeatable)")
        return s

    with_params("train", "train a model (the training notebook's job)")
    s = with_params("notebook", "validate the config, then run a notebook headless with papermill",
                    before=("notebook", "notebooks/train.ipynb, evaluate.ipynb or infer.ipynb"))
    s.add_argument("--output", help="executed notebook path (default: RUN_DIR/NOTEBOOK)")
    s = with_params("preview", "print formatted examples with the trained span marked")
    s.add_argument("-n", type=int, default=3, help="how many examples")
    s = with_params("eval", "score the base and the tuned model on the test split")
    s.add_argument("--run", help="run folder (default: output_dir/run_name from the params)")
    s = sub.add_parser("infer", help="generate for each line of a JSONL file")
    s.add_argument("--model", required=True, help="model folder or Hub id")
    s.add_argument("--adapter", help="LoRA adapter folder")
    s.add_argument("--input", required=True, help="JSONL: a prompt string, {messages: [...]}, or the dataset's columns")
    s.add_argument("--output", required=True, help="JSONL to write")
    s.add_argument("--params", help="params YAML whose template and generation settings to use")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    s = sub.add_parser("export", help="export a finished run: adapter, merged_16bit, Hub push")
    s.add_argument("run_dir", help="the run folder")
    s.add_argument("--method", action="append", default=[], help="lora, merged_16bit, merged_4bit_forced, gguf (repeatable)")
    s.add_argument("--push-to-hub", metavar="USER/REPO", help="upload the exported folder (token from HF_TOKEN)")
    s.add_argument("--private", action="store_true", help="create the Hub repo private")
    s.add_argument("--token", help=argparse.SUPPRESS)  # refused below with the reason
    return p


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


def _dispatch(args) -> int:
    from unsloth_sft.config import load_config

    if args.command == "train":
        from unsloth_sft.pipeline import run_training

        metrics = run_training(load_config(args.params, args.overrides))
        if os.environ.get("RANK", "0") == "0":  # one summary line per job, not one per process
            print(json.dumps({k: metrics[k] for k in ("runtime_s", "steps", "tokens_per_s", "first_loss", "last_loss")}))
        return 0
    if args.command == "notebook":
        from unsloth_sft.notebooks import run_notebook

        out = run_notebook(args.notebook, args.params, args.overrides, args.output)
        print(f"executed notebook: {out}")
        return 0
    if args.command == "preview":
        from unsloth_sft.preview import preview

        print(preview(load_config(args.params, args.overrides), n=args.n))
        return 0
    if args.command == "eval":
        from unsloth_sft.evaluate import evaluate_run

        cfg = load_config(args.params, args.overrides)
        report = evaluate_run(cfg, Path(args.run) if args.run else cfg.run_dir)
        print(report["summary"])
        return 0
    if args.command == "infer":
        from unsloth_sft.infer import infer_file

        cfg = load_config(args.params, args.overrides) if args.params else load_config(None, args.overrides)
        counts = infer_file(cfg, args.model, args.adapter, Path(args.input), Path(args.output))
        print(json.dumps(counts))
        return 1 if counts["failed"] and not counts["written"] else 0
    if args.command == "export":
        from unsloth_sft.errors import ConfigError
        from unsloth_sft.export import export_run

        if args.token is not None:
            raise ConfigError("--token is refused: a token on the command line lands in shell history and process "
                              "lists; set the HF_TOKEN environment variable (or run `huggingface-cli login`)")

        result = export_run(Path(args.run_dir), args.method or ["merged_16bit"], args.push_to_hub, args.private)
        print(json.dumps(result))
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    raise SystemExit(main())
