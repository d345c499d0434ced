"""Notebook support: config from papermill parameters, small display helpers, and the papermill runner."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from unsloth_sft.config.load import check_secret, load_config
from unsloth_sft.config.run import RunConfig
from unsloth_sft.core.errors import ConfigError, RunError
from unsloth_sft.core.files import atomic_file, check_output
from unsloth_sft.core.quiet import is_verbose
from unsloth_sft.runs.folder import RunDir

SECTIONS = ("run_name", "output_dir", "finetune", "overwrite", "model", "lora", "data", "train", "eval", "export")
SHORTCUTS = {"dataset": "data.source", "max_steps": "train.max_steps", "model_name": "model.name"}
PARAMETERS = (
    "params_file",
    "overrides",
    "run_eval",
    *SHORTCUTS,
    *SECTIONS,
)  # what a notebook's parameters cell defines
# papermill -f passes every top-level key of a params file; a sweep file's `sweep:` section is for `unsloth-sft
# sweep`, and the notebook runs the recipe around it as one variant (as load_config leaves the section out)
IGNORED = ("sweep",)


def notebook_config(namespace: dict[str, Any], defined: set[str]) -> RunConfig:
    """The RunConfig of a notebook run from its parameters (params_file, sections from papermill -f, -p shortcuts).

    `defined` is `set(dir())` taken at the end of the parameters cell: any name papermill injected beyond it
    is a parameter the notebook does not know, which papermill itself only warns about.
    """
    unknown = sorted(k for k in namespace if k not in defined and k not in IGNORED and not k.startswith("_"))
    for name in unknown:  # `-p hf_token ...` gets the reason, not just "unknown"
        check_secret(name, f"notebook parameter '{name}'")
    if unknown:
        raise ConfigError(f"unknown notebook parameter(s): {', '.join(unknown)}; known: {', '.join(PARAMETERS)}")
    params = _sections(namespace)
    # papermill -f gives the sections themselves: then a params_file would only leak keys the recipe left out.
    params_file = None if params else namespace.get("params_file") or None
    return load_config(params_file, overrides=notebook_overrides(namespace), params=params)


def notebook_recipe(namespace: dict[str, Any]) -> str | dict[str, Any] | None:
    """What a notebook run's report diffs its config against: the params file named (`unsloth-sft notebook` names
    it), else the sections papermill -f gave, else None (the library defaults)."""
    return namespace.get("params_file") or _sections(namespace) or None


def _sections(namespace: dict[str, Any]) -> dict[str, Any]:
    params = {k: namespace[k] for k in SECTIONS if namespace.get(k) not in (None, {})}
    if "lora" in namespace and namespace["lora"] is None:
        params["lora"] = None
    return params


def notebook_overrides(namespace: dict[str, Any]) -> list:
    """The explicit changes a notebook run was given: `overrides`, then the -p shortcuts as (key, value) pairs."""
    overrides = namespace.get("overrides") or []
    if isinstance(overrides, str):  # papermill -p passes text: '["a.b=1", "c.d=2"]' or one 'a.b=1'
        import yaml

        overrides = yaml.safe_load(overrides) if overrides.lstrip().startswith("[") else [overrides]
    if not isinstance(overrides, list):
        raise ConfigError(f'overrides: expected a list like ["train.max_steps=5"], got {overrides!r}')
    shortcuts = [(path, namespace[name]) for name, path in SHORTCUTS.items() if namespace.get(name) is not None]
    return [str(o) for o in overrides] + shortcuts


def notebook_run(namespace: dict[str, Any], defined: set[str], run_dir: str | None = None) -> tuple[RunDir, RunConfig]:
    """For the evaluate and infer notebooks: the run folder (run_dir, else output_dir/run_name) and the config
    to use it with: its own config.yaml, which a recipe given as well must agree with (runconfig.run_config)."""
    from unsloth_sft.runs.config import run_config

    given = notebook_config(namespace, defined)
    recipe = bool(_sections(namespace) or namespace.get("params_file"))  # else `given` is only the defaults
    run = RunDir(run_dir or given.run_dir)
    return run, run_config(run, given if recipe else None, notebook_overrides(namespace), where="notebook parameters")


def side_by_side(before: list[dict], after: list[dict]) -> str:
    """Markdown: reference, output before and output after training for a few examples (pipeline.quick_generation)."""
    rows = ["| # | reference | before training | after training |", "|---|---|---|---|"]
    clean = lambda s: s.replace("|", "\\|").replace("\n", " ")[:300]  # noqa: E731
    for i, (b, a) in enumerate(zip(before, after), 1):
        rows.append(f"| {i} | {clean(b['reference'])} | {clean(b['output'])} | {clean(a['output'])} |")
    return "\n".join(rows)


def execute_notebook(notebook: str | Path, output: Path, parameters: dict[str, Any]) -> Path:
    """papermill, headless, into `output`, streaming the cells' output; a failing cell becomes one line naming the
    cell. papermill writes a temporary file beside `output`, renamed over it at the end (a failed run's notebook
    too: it shows the failing cell), so a kill leaves the older `output` whole; never over the notebook itself."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    if not Path(notebook).is_file():
        raise ConfigError(f"{notebook}: notebook not found (notebooks/train.ipynb, evaluate.ipynb, infer.ipynb)")
    check_output(notebook, output, "--output", f"the notebook {notebook} itself", "write the executed copy elsewhere")
    if not is_verbose():  # tqdm.auto in a kernel without ipywidgets warns once per import: it says nothing to act on
        os.environ.setdefault("PYTHONWARNINGS", "ignore:IProgress not found")
    failed = None
    with atomic_file(output) as tmp:
        try:
            papermill.execute_notebook(
                str(notebook),
                str(tmp),
                parameters=parameters,
                kernel_name="python3",
                language="python",
                cwd=str(Path.cwd()),
                progress_bar=False,
                log_output=True,  # each cell's output as it comes: the stage and step lines of a long run
                stdout_file=sys.stdout,
                stderr_file=sys.stderr,
                # the kernel's own start-up notices (e.g. "Kernel is running over TCP without encryption") are not ours
                extra_arguments=[] if is_verbose() else ["--IPKernelApp.log_level=ERROR"],
            )
        except PapermillExecutionError as err:  # papermill wrote the whole notebook, the failing cell included
            failed = err
    if failed is not None:
        raise RunError(f"{failed.ename}: {failed.evalue} (in {output}, cell {failed.exec_count})") from None
    return output


def run_notebook(notebook: str, params: str, overrides: list[str], output: str | None = None) -> Path:
    """Validate the config first (papermill only warns on bad parameters), then execute the notebook."""
    cfg = load_config(params, overrides)
    out = Path(output) if output else cfg.run_dir / Path(notebook).name
    parameters = {"params_file": str(Path(params).resolve()), "overrides": list(overrides)}
    return execute_notebook(notebook, out, parameters)
