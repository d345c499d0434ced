"""The package's shape, checked from its source: rooms that import one way, no import cycle, small files, one writer
that renames into place, one export dispatcher, a public API the notebooks keep to, no work-history words."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SRC = ROOT / "src" / "unsloth_sft"
# The rooms, lowest first: a module may import from its own room and the rooms before it, never from a later one.
ROOMS = [
    "core",
    "tasks",
    "config",
    "runs",
    "models",
    "data",
    "evaluation",
    "export",
    "training",
    "pipeline",
    "notebooks",
    "studies",
    "app",
]
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """Every module of the package this file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def room(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) == 1:
        return None  # the package's __init__: the public API
    return "app" if parts[1] == "__main__" else parts[1]  # `python -m unsloth_sft` is the CLI


def graph() -> dict[str, set[str]]:
    edges = {}
    for name, path in MODULES.items():
        # a submodule importing its own package (`from unsloth_sft.tasks import metrics`) is how packages load
        edges[name] = {t for t in imports(path) if t != name and not name.startswith(t + ".")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, done, stack = [], set(), []

    def visit(node):
        if node in stack:
            found.append(stack[stack.index(node) :] + [node])
            return
        if node in done:
            return
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            visit(nxt)
        stack.pop()
        done.add(node)

    for node in sorted(edges):
        visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules_lazy_imports_included():
    assert cycles(graph()) == []


def test_imports_flow_from_later_rooms_to_earlier_ones():
    assert sorted({room(m) for m in MODULES} - {None}) == sorted(ROOMS), "a room was added: place it in ROOMS"
    wrong = []
    for module, targets in graph().items():
        here = room(module)
        for target in targets:
            there = room(target)
            if here is None and there != "core":  # the API imports its errors; everything else by name, lazily
                wrong.append(f"{module} -> {target} (the public API imports lazily, by name)")
            elif here is not None and there is not None and ROOMS.index(there) > ROOMS.index(here):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_every_module_imports():
    import unsloth_sft

    for info in pkgutil.walk_packages(unsloth_sft.__path__, "unsloth_sft."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)


@pytest.mark.parametrize("folder", ["src", "bench"])
def test_no_source_file_over_400_lines(folder):
    long = {
        str(p.relative_to(ROOT)): n
        for p in sorted((ROOT / folder).rglob("*.py"))
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_importing_the_api_and_the_cli_loads_no_framework():
    """`import unsloth_sft`, the training pipeline and the CLI import no torch, transformers or unsloth: unsloth must
    be imported before transformers (it patches it), and a bad params file must fail in a second, not after imports."""
    heavy = ("torch", "transformers", "trl", "peft", "datasets", "unsloth")
    code = (
        "import sys, unsloth_sft, unsloth_sft.pipeline, unsloth_sft.app.cli, unsloth_sft.notebooks\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_public_api_names_resolve():
    import unsloth_sft

    for name in unsloth_sft.__all__:
        assert getattr(unsloth_sft, name) is not None, name
    with pytest.raises(AttributeError):
        unsloth_sft.no_such_name  # noqa: B018


def test_notebooks_written_against_the_old_flat_modules_still_import():
    """The train notebook once imported these module names; a copy of it in a user's project keeps working."""
    from unsloth_sft import evaluate, pipeline, preview, report

    assert callable(evaluate.evaluate_run) and callable(preview.mark_trained) and callable(report.run_summary)
    assert all(callable(getattr(pipeline, stage)) for stage in ("begin", "load_base", "add_lora", "fit", "finish"))
    from unsloth_sft.config import load_config
    from unsloth_sft.notebooks import notebook_config, notebook_run, side_by_side
    from unsloth_sft.runs import RunDir
    from unsloth_sft.tasks import Task, register

    assert all(map(callable, (load_config, notebook_config, notebook_run, side_by_side, RunDir, Task, register)))


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.py")), ids=lambda p: p.name)
def test_notebooks_import_only_the_public_api(notebook):
    import unsloth_sft

    used = []
    for node in ast.walk(ast.parse(notebook.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("unsloth_sft"):
            used.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("unsloth_sft.") for a in node.names)
    assert used, "the notebook imports nothing from the library"
    for module, names in used:
        assert module == "unsloth_sft", f"{notebook.name} imports from {module}"
        assert set(names) <= set(unsloth_sft.__all__)


def calls_to(names: set[str]) -> dict[str, set[str]]:
    """Which modules call (or import) each of `names`."""
    where: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
                if name in names:
                    where.setdefault(name, set()).add(module)
    return where


def test_one_export_dispatcher():
    """Only the export plan decides what is saved: nothing else calls the savers, the GGUF export or the check."""
    savers = {"save_adapter", "merge_adapter", "save_full", "export_unsloth", "export_gguf", "check_merged"}
    where = calls_to(savers)
    assert where and all(callers == {"unsloth_sft.export.plan"} for callers in where.values()), where
    assert calls_to({"export"}).get("export", set()) <= {"unsloth_sft.pipeline", "unsloth_sft.export.plan"}


def test_only_core_files_renames_into_place():
    """Atomic writes have one home (core/files.py): no other module renames a temporary file or folder into place
    (RunDir.set_aside moves a whole old run aside, which is a move, not a write)."""
    allowed = {"unsloth_sft.core.files"}
    pattern = re.compile(r"os\.replace\(|\.replace\((?:tmp|staged|path)|tempfile\.mkdtemp|tempfile\.mkstemp|\.rename\(")
    found = {
        module: [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if pattern.search(line)]
        for module, path in MODULES.items()
        if module not in allowed
    }
    found = {m: lines for m, lines in found.items() if lines}
    assert found == {"unsloth_sft.runs.folder": ["self.path.rename(aside)"]}


def test_no_temporary_work_in_the_system_temp_dir():
    """Only core/files.py uses tempfile, always with dir= beside the output: what a SIGKILL leaves is found there by
    remove_leftovers, never left in /tmp (the tiny model's pretraining works in a scratch_dir beside the cache)."""
    found = {
        module: [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if "tempfile" in line]
        for module, path in MODULES.items()
        if module != "unsloth_sft.core.files"
    }
    assert {m: lines for m, lines in found.items() if lines} == {}


HISTORY = re.compile(r"\bsessions? [0-9]|\b(this|last|previous|next) session\b|\bsession-[0-9]", re.IGNORECASE)


def test_no_work_history_words():
    """The project speaks of the product: a figure carries its date, machine and command, not a work period."""
    tracked = subprocess.run(
        ["git", "ls-files", "README.md", "docs", "bench", "src", "notebooks", "params", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.split()
    here = Path(__file__).relative_to(ROOT).as_posix()
    hits = []
    for name in tracked:
        path = ROOT / name
        if name == here or not path.is_file() or path.suffix in (".png", ".parquet"):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if HISTORY.search(line):
                hits.append(f"{name}:{n}: {line.strip()[:80]}")
    assert hits == []


# Writers that may write outside an atomic_* block, and why. Anything else that writes a file must be inside
# `with atomic_dir/atomic_file/scratch_dir(...)` (core.files), so a kill or a full disk never leaves half a file.
WRITERS_ALLOWED = {
    ("unsloth_sft.data.tables", "write_rows"): "writes into the temporary folder data.tables.cached holds atomically",
    ("unsloth_sft.evaluation.report", "plot_metrics"): "draws into the eval folder write_eval holds atomically",
    ("unsloth_sft.export.gguf", "stage"): "fills the scratch folder export_gguf made",
    ("unsloth_sft.models.gguf", "concatenate"): "writes into its caller's temporary or scratch folder",
    ("unsloth_sft.models.gguf", "_save_weights"): "saves into the temporary folder convert holds atomically",
    ("unsloth_sft.models.tiny", "train_sentencepiece"): "writes into the temporary folder build_tiny_model holds",
    ("unsloth_sft.runs.lock", "acquire"): "the lock file's holder record, not an output",
    ("unsloth_sft.studies.trials", "run_variant"): "a trial's log, streamed as the child writes it",
    ("unsloth_sft.training.distributed", "save_sharded"): "every rank gathers into one staging folder, then one rename",
}


def unguarded_writes() -> set[tuple[str, str]]:
    """(module, function) of every call that writes a file outside an atomic_* block (core.files excepted)."""
    atomic = {"atomic_dir", "atomic_file", "scratch_dir"}
    found = set()

    def name_of(call):
        f = call.func
        return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None

    def writes(call) -> bool:
        name = name_of(call)
        if name in ("write_text", "write_bytes", "savefig", "save_pretrained", "save_to_disk", "save_model", "write"):
            return True
        if name in ("copy", "copyfile", "copyfileobj", "copytree"):
            return isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", "") == "shutil"
        if name == "dump":  # json.dump / yaml.dump into a stream (yaml.dump without one returns text)
            return len(call.args) >= 2
        if name == "open":
            mode = (
                call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
            )
            return (
                isinstance(mode, ast.Constant) and isinstance(mode.value, str) and any(c in mode.value for c in "wax+")
            )
        return False

    def walk(node, module, function, guarded):
        if isinstance(node, ast.With) and any(
            isinstance(i.context_expr, ast.Call) and name_of(i.context_expr) in atomic for i in node.items
        ):
            guarded = True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if isinstance(node, ast.Call) and not guarded and writes(node):
            found.add((module, function))
        for child in ast.iter_child_nodes(node):
            walk(child, module, function, guarded)

    for module, path in MODULES.items():
        if module != "unsloth_sft.core.files":
            walk(ast.parse(path.read_text(encoding="utf-8")), module, None, False)
    return found


def test_every_writer_goes_through_the_atomic_helpers():
    assert unguarded_writes() == set(WRITERS_ALLOWED)
