"""GPU smoke run: the user's path end to end on random-initialised Gemma-2 2B, loaded 4-bit, unsloth backend.

    python -m bench.gpu --smoke                          # = python -m bench.gpu_smoke, on a GPU
    python -m bench.gpu_smoke --model tiny               # the same steps on the tiny offline model (CPU: a dry run)

Each step is a fresh process of the real command line (`unsloth-sft ...`, run in-process by `--peak-wrap`, which
records torch.cuda.max_memory_reserved at exit; or papermill), killed with its process group after --steps-timeout,
logged to WORK/logs/STEP.log. build: the random 2B (bf16, kept under $UNSLOTH_SFT_CACHE/gpu-models, as bench.gpu's)
or the tiny model; train: `unsloth-sft train WORK/params.yaml`, 12 steps on sample:hindi-dialogsum with
params/demo-cpu.yaml's settings and the GPU memory lines; eval: `eval --run RUN --set eval.max_samples=8`; export:
`export RUN --method merged_16bit` and its check; infer: `infer --run RUN` on one line; notebook: `papermill
notebooks/train.ipynb -f WORK/notebook-params.yaml` (the same params, a run of its own; peak from its metrics.json).

A step whose input an earlier one failed to make is skipped. Results: bench/results/gpu-smoke-<gpu>.json and .md for
the 2B on a GPU; a tiny run writes gpu-smoke-cpu (or -<gpu>-tiny) into the work folder unless --results says where,
never named as GPU evidence. Written after every step; exit 0 only when every step passed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, cpu_device, markdown_table

MODULE = "bench.gpu_smoke"
STEPS = ("build", "train", "eval", "export", "infer", "notebook")
NEEDS = {"train": "build", "eval": "train", "export": "train", "infer": "train", "notebook": "build"}
TRAIN_STEPS, EVAL_EXAMPLES = 12, 8
DEMO = ROOT / "params" / "demo-cpu.yaml"
NOTEBOOK = ROOT / "notebooks" / "train.ipynb"
VERSIONS = "torch transformers unsloth unsloth_zoo trl peft accelerate bitsandbytes datasets triton papermill ipykernel"
COLUMNS = [("step", "step", 0), ("status", "status", 0), ("seconds", "seconds", 1), ("peak_gpu_gb", "peak GPU GB", 2)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="2b", choices=("2b", "tiny"), help="random Gemma-2 2B (GPU), or the tiny model")
    p.add_argument("--steps-timeout", type=int, default=600, help="seconds each step may take before it is killed")
    p.add_argument("--out", type=Path, default=None, help="work folder: params, runs, logs (default: a temp folder)")
    p.add_argument("--results", type=Path, default=None, help="results folder (default: see above)")
    p.add_argument("--models-dir", type=Path, default=None, help="where the random 2B is saved (default: bench.gpu's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override, train + notebook")
    p.add_argument("--verbose", action="store_true", help="steps run with --verbose (the libraries' output too)")
    p.add_argument("--build", action="store_true", help=argparse.SUPPRESS)  # worker: build the model
    p.add_argument("--json-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    bad = [item for item in args.set if "=" not in item]
    if args.steps_timeout < 1 or bad:
        p.error(f"--set {bad[0]!r}: expected KEY=VALUE" if bad else "--steps-timeout must be >= 1")
    return args


# ---------------------------------------------------------------- the CLI in-process, with its peak GPU memory


def peak_wrap(out: Path, cli_args: list[str]) -> int:
    """`unsloth-sft ARGS` in this process; {"rc", "peak_gpu_gb"} written to `out` whatever way it ends."""
    if cli_args[:1] == ["unsloth-sft"]:
        cli_args = cli_args[1:]
    rc = 1
    try:
        from unsloth_sft.app.cli import main as cli

        rc = cli(cli_args)
    except SystemExit as err:
        rc = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    finally:
        torch, peak = sys.modules.get("torch"), None  # imported by the command, not here (unsloth must come first)
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            peak = round(torch.cuda.max_memory_reserved() / 1024**3, 3)
        Path(out).write_text(json.dumps({"rc": rc, "peak_gpu_gb": peak}))
    return rc


def build_model(args: argparse.Namespace) -> dict:
    """The model the steps train: the random 2B (bench.gpu_worker.run_build; kept) or the tiny model."""
    if args.model == "tiny":
        from unsloth_sft.models.tiny import tiny_model_path

        return {"path": str(tiny_model_path())}
    from bench.gpu_worker import run_build

    return run_build(argparse.Namespace(models=["2b"], models_dir=args.models_dir))["2b"]


# ---------------------------------------------------------------- params, steps and checks


def smoke_params(model: str, model_path: str, run_name: str, out: Path) -> dict:
    """params/demo-cpu.yaml with the model, 12 steps, 8 eval examples, the adapter only (export is its own step)."""
    import yaml

    p = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    p.update(run_name=run_name, output_dir=str(out / "runs"))
    p["model"].update(name=model_path, backend="unsloth" if model == "2b" else "auto", load_in_4bit=True)
    p["train"].update(max_steps=TRAIN_STEPS, warmup_steps=2)
    if model == "2b":
        p["train"]["learning_rate"] = 2e-4  # the GPU recipe's (params/gemma2-9b-hindi-summarization.yaml)
    p["eval"]["max_samples"] = EVAL_EXAMPLES
    p["export"]["save_methods"] = ["lora"]
    return p


def sample_line() -> dict:
    """The first test dialogue of the bundled sample, as infer's one input line (no import of the library)."""
    spec = importlib.util.find_spec("unsloth_sft")
    root = Path(next(iter(spec.submodule_search_locations))) if spec else ROOT / "src" / "unsloth_sft"
    row = json.loads((root / "samples" / "hindi-dialogsum" / "test.jsonl").read_text(encoding="utf-8").splitlines()[0])
    return {"dialogue": row["dialogue"]}


def last_line(log: Path) -> str | None:
    lines = [s.strip() for s in log.read_text(errors="replace").splitlines() if s.strip()]
    return lines[-1][:500] if lines else None


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def kill_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM to the step's process group (the CLI cleans up as on Ctrl-C), SIGKILL after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(cmd: list[str], log: Path, timeout: int, env: dict) -> tuple[int | None, float]:
    """(exit code, or None on time-out; seconds): `cmd` in a process group of its own, output to `log`."""
    start = time.time()
    with log.open("w") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            rc = None
        except BaseException:  # Ctrl-C: the step goes too
            kill_group(proc, grace=5.0)
            raise
    return rc, round(time.time() - start, 1)


class Smoke:
    """The steps of one smoke run, their commands and checks, and the results file written after each step."""

    def __init__(self, args: argparse.Namespace, cuda: bool):
        self.args, self.cuda = args, cuda
        from unsloth_sft.core.paths import cache_root

        if args.out is None:
            (cache_root() / "gpu-smoke").mkdir(parents=True, exist_ok=True)
        self.work = args.out or Path(tempfile.mkdtemp(prefix="smoke-", dir=cache_root() / "gpu-smoke"))
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.params, self.nb_params = self.work / "params.yaml", self.work / "notebook-params.yaml"
        self.run, self.nb_run = self.work / "runs" / "smoke", self.work / "runs" / "smoke-notebook"
        self.infer_in, self.infer_out = self.work / "infer-input.jsonl", self.work / "infer-output.jsonl"
        self.steps: dict[str, dict] = {}
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        if not cuda:
            self.env.setdefault("OMP_NUM_THREADS", "1")  # shared CPU cores: one thread per step is the fastest

    def cli(self, name: str, *cli_args: str) -> list[str]:
        verbose = ["--verbose"] if self.args.verbose else []
        peak = str(self.logs / f"{name}.peak.json")
        return [sys.executable, "-m", MODULE, "--peak-wrap", peak, "--", *cli_args[:1], *verbose, *cli_args[1:]]

    def command(self, name: str) -> list[str]:
        sets = [x for s in self.args.set for x in ("--set", s)]
        if name == "build":
            extra = ["--models-dir", str(self.args.models_dir)] if self.args.models_dir else []
            out = str(self.logs / "build.json")
            return [sys.executable, "-m", MODULE, "--build", "--model", self.args.model, *extra, "--json-out", out]
        if name == "train":
            return self.cli(name, "train", str(self.params), *sets)
        if name == "eval":
            return self.cli(name, "eval", "--run", str(self.run), "--set", f"eval.max_samples={EVAL_EXAMPLES}")
        if name == "export":
            return self.cli(name, "export", str(self.run), "--method", "merged_16bit")
        if name == "infer":
            io = ["--input", str(self.infer_in), "--output", str(self.infer_out)]
            return self.cli(name, "infer", "--run", str(self.run), *io)
        nb = [str(NOTEBOOK), str(self.work / "train.ipynb"), "-f", str(self.nb_params), "--cwd", str(ROOT)]
        nb += ["-k", "python3", "--log-output", "--no-progress-bar"]
        if self.args.set:
            nb += ["-p", "overrides", json.dumps(self.args.set)]
        return [sys.executable, "-m", "papermill", *nb]

    def prepare(self, name: str) -> str | None:
        """Writes what the step reads; a reason it cannot run, or None."""
        import yaml

        if name == "train":
            model_path = (read_json(self.logs / "build.json") or {}).get("path")
            for path, run_name in ((self.params, "smoke"), (self.nb_params, "smoke-notebook")):
                params = smoke_params(self.args.model, model_path, run_name, self.work)
                path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True), encoding="utf-8")
        if name == "infer":
            self.infer_in.write_text(json.dumps(sample_line(), ensure_ascii=False) + "\n", encoding="utf-8")
        if name == "notebook":
            missing = [m for m in ("papermill", "ipykernel") if importlib.util.find_spec(m) is None]
            if missing:
                return f"missing packages: {', '.join(missing)} (scripts/gpu-bundle.sh carries them)"
        return None

    def check(self, name: str, log: Path) -> str | None:
        """What the step's output lacks, or None: each step is judged by what it made, not only its exit code."""
        run, memory = self.run, ("GPU = ", "Peak reserved memory = ") if self.cuda else ("peak RSS",)
        scored = (read_json(run / "eval" / "metrics.json") or {}).get("test_examples")
        merged = ((read_json(run / "export_check.json") or {}).get("merged_vs_adapter") or {}).get("passed")
        rows = self.infer_out.read_text(encoding="utf-8").splitlines() if self.infer_out.is_file() else []
        wants = {  # step: (what it made is right, the problem otherwise)
            "build": ((read_json(self.logs / "build.json") or {}).get("path"), "the build wrote no model path"),
            "train": ((run / "metrics.json").is_file() and (run / "adapter").is_dir(), f"{run}: no metrics or adapter"),
            "eval": (scored == EVAL_EXAMPLES, f"eval scored {scored} test examples, not {EVAL_EXAMPLES}"),
            "export": (
                merged and (run / "merged").is_dir(),
                f"no merged/ or no passed check in {run}/export_check.json",
            ),
            "infer": (len(rows) == 1, f"infer wrote {len(rows)} lines, not 1"),
            "notebook": ((self.nb_run / "metrics.json").is_file(), f"{self.nb_run} has no metrics.json"),
        }
        if name == "train" and not all(s in log.read_text(errors="replace") for s in memory):
            return f"no memory lines ({', '.join(repr(s) for s in memory)}) in the output"
        return None if wants[name][0] else wants[name][1]

    def peak(self, name: str) -> float | None:  # GB
        if name == "notebook":
            return ((read_json(self.nb_run / "metrics.json") or {}).get("memory") or {}).get("gpu_peak_reserved_gb")
        return (read_json(self.logs / f"{name}.peak.json") or {}).get("peak_gpu_gb")

    def step(self, name: str) -> dict:
        need = NEEDS.get(name)
        if need and self.steps[need]["status"] != "passed":
            why = f"needs {need}, which {self.steps[need]['status']}"
            return {"status": "skipped", "seconds": 0.0, "peak_gpu_gb": None, "log": None, "error": why}
        log = self.logs / f"{name}.log"
        problem = self.prepare(name)
        if problem:
            log.write_text(problem + "\n")
            return {"status": "failed", "seconds": 0.0, "peak_gpu_gb": None, "log": str(log), "error": problem}
        cmd = self.command(name)
        rc, seconds = run_step(cmd, log, self.args.steps_timeout, self.env)
        if rc is None:
            error = f"timed out after {self.args.steps_timeout} s (process group killed); last line: {last_line(log)}"
        elif rc != 0:
            error = last_line(log) or f"exit {rc}"
        else:
            error = self.check(name, log)
        status = "failed" if error else "passed"
        return {"status": status, "seconds": seconds, "peak_gpu_gb": self.peak(name), "log": str(log), "error": error}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in VERSIONS.split():
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def render_markdown(results: dict) -> str:
    rows = [{"step": k, **v} for k, v in results["steps"].items()]
    lines = [
        f"# GPU smoke run ({results['gpu']})",
        "",
        f"Command: `{results['command']}` on {results['date']}; model {results['model']}, backend "
        f"{results['backend']}. Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items() if v) + ".",
        "",
        markdown_table(rows, COLUMNS),
        "",
    ]
    lines += [f"- {r['step']}: {r['status']}: {r['error']}" for r in rows if r["status"] != "passed"]
    return "\n".join(lines) + "\n"


def write_results(results: dict, folder: Path, stem: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / f"{stem}.md").write_text(render_markdown(results), encoding="utf-8")


def drive(args: argparse.Namespace, cuda: bool, argv: list[str]) -> int:
    from bench.gpu import gpu_slug

    gpu = cuda_version = None
    if cuda:
        import torch

        gpu, cuda_version = torch.cuda.get_device_name(0), torch.version.cuda
    smoke = Smoke(args, cuda)
    if cuda and args.model == "2b":
        folder, stem = args.results or RESULTS, f"gpu-smoke-{gpu_slug(gpu)}"
    else:  # a dry run: never named or placed as GPU evidence
        folder, stem = args.results or smoke.work, f"gpu-smoke-{gpu_slug(gpu)}-tiny" if cuda else "gpu-smoke-cpu"
    results = {
        "steps": smoke.steps,
        "versions": {**versions(), "cuda": cuda_version},
        "gpu": gpu or cpu_device(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": f"python -m {MODULE} {shlex.join(argv)}".strip(),
        "model": "gemma2-2b (random init, 4-bit)" if args.model == "2b" else "tiny-gemma2",
        "backend": "unsloth" if args.model == "2b" else "auto",
        "work": str(smoke.work),
        "finished": False,
    }
    print(f"smoke run of the {results['model']} on {results['gpu']}; work folder {smoke.work}", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `timeout` outside: as Ctrl-C, the step goes too
    started = time.time()
    try:
        for name in STEPS:
            print(f"{name} ...", flush=True)
            started = time.time()
            smoke.steps[name] = row = smoke.step(name)
            peak = f", peak {row['peak_gpu_gb']:.2f} GB" if row["peak_gpu_gb"] is not None else ""
            print(f"  {row['status']} ({row['seconds']:.1f} s{peak})" + (f": {row['error']}" if row["error"] else ""))
            write_results(results, folder, stem)  # after every step: a run killed from outside leaves its evidence
    except KeyboardInterrupt:
        for i, name in enumerate(n for n in STEPS if n not in smoke.steps):
            log = str(smoke.logs / f"{name}.log") if i == 0 else None
            seconds = round(time.time() - started, 1) if i == 0 else 0.0
            why = "interrupted (SIGTERM or Ctrl-C)" if i == 0 else "the run was interrupted"
            row = {"status": "skipped" if i else "failed", "seconds": seconds, "peak_gpu_gb": None, "log": log}
            smoke.steps[name] = {**row, "error": why}
        results["interrupted"] = True
    results["finished"] = True
    results["passed"] = all(r["status"] == "passed" for r in smoke.steps.values())
    write_results(results, folder, stem)
    print("\n" + render_markdown(results) + f"\nwrote {folder / stem}.json and .md (logs in {smoke.logs})")
    return 130 if results.get("interrupted") else 0 if results["passed"] else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--peak-wrap"]:
        if len(argv) < 3 or argv[2] != "--":
            print(f"usage: python -m {MODULE} --peak-wrap OUTFILE -- unsloth-sft ARGS...", file=sys.stderr)
            return 2
        return peak_wrap(Path(argv[1]), argv[3:])
    args = parse_args(argv)
    os.environ.setdefault("UNSLOTH_SFT_CACHE", str(ROOT / ".cache"))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")  # nothing is downloaded: the GPU machine may have no network
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    if args.build:
        start = time.time()
        built = {**build_model(args), "seconds": round(time.time() - start, 1)}
        print(f"model: {built['path']} ({built['seconds']} s)", flush=True)
        args.json_out.write_text(json.dumps(built)) if args.json_out else print(json.dumps(built))
        return 0
    from bench.gpu import check_requirements

    message = check_requirements(["unsloth"] if args.model == "2b" else ["transformers"])
    if message:
        print(message, file=sys.stderr)
        return 2
    import torch

    cuda = torch.cuda.is_available()
    if args.model == "2b" and not cuda:
        print("no CUDA GPU here: the 2B needs one (--model tiny runs the same steps on a CPU)", file=sys.stderr)
        return 2
    return drive(args, cuda, argv)


if __name__ == "__main__":
    sys.exit(main())
