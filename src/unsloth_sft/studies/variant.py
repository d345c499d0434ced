"""One sweep variant in its own process: train (or resume) and evaluate; on failure, error.json with one line.

`python -m unsloth_sft.studies.variant SWEEP/variants/NAME.yaml [--notebook notebooks/train.ipynb] [--no-eval]`: the sweep
starts this; the config file is the variant's resolved config. Through a notebook, papermill executes it into the
run folder (`RUN_DIR/train.ipynb`, kept); else the library's own training job runs here.
"""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path

from unsloth_sft.config.load import load_config
from unsloth_sft.config.run import RunConfig
from unsloth_sft.core.files import write_json
from unsloth_sft.runs.folder import ERROR, RunDir
from unsloth_sft.runs.folder import VARIANT_WALL as WALL


def through_notebook(notebook: str, config: Path, run: RunDir, evaluate: bool) -> None:
    """papermill, with the executed notebook kept in the run folder; a failing cell becomes its own one line."""
    from unsloth_sft.notebooks import execute_notebook

    execute_notebook(notebook, run / Path(notebook).name, {"params_file": str(config.resolve()), "run_eval": evaluate})


def in_process(cfg: RunConfig, evaluate: bool, recipe: str | None = None) -> None:
    """The CLI path: `unsloth-sft train` then `unsloth-sft eval --run`, without a second process start."""
    from unsloth_sft import pipeline
    from unsloth_sft.evaluation.evaluate import evaluate_run

    run = pipeline.start(cfg, recipe)
    pipeline.fit(run)
    pipeline.finish(run)
    if evaluate:
        pipeline.release(run)
        evaluate_run(cfg, run.folder)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m unsloth_sft.studies.variant")
    p.add_argument("config", help="the variant's resolved config (SWEEP/variants/NAME.yaml)")
    p.add_argument("--notebook", help="run through this notebook with papermill")
    p.add_argument("--no-eval", dest="evaluate", action="store_false")
    args = p.parse_args(argv)
    started = time.perf_counter()
    run = None
    try:
        cfg = load_config(args.config)
        run = RunDir(cfg.run_dir)
        if not run.is_finished:
            if args.notebook:
                through_notebook(args.notebook, Path(args.config), run, args.evaluate)
            else:
                in_process(cfg, args.evaluate, args.config)
        if args.evaluate and run.eval_metrics() is None:  # trained before, stopped during evaluation
            from unsloth_sft.evaluation.evaluate import evaluate_run

            evaluate_run(cfg, run)
    except KeyboardInterrupt:
        return 130  # interrupted, not failed: no error.json, and a rerun resumes it
    except Exception as err:
        traceback.print_exc()  # into the variant's log
        line = " ".join(str(err).split()) or type(err).__name__
        where = run or RunDir(Path(args.config).parent.parent / Path(args.config).stem)
        write_json(where / ERROR, {"error": line, "type": type(err).__name__})
        return 1
    write_json(run / WALL, {"wall_s": round(time.perf_counter() - started, 1), "notebook": args.notebook})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
