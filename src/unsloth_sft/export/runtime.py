"""llama.cpp's own runtime, `llama-server` (and `llama-quantize`), built once from the vendored tree the GGUF converter
comes from (the server itself: export.llama_cpp).

The build (`python -m unsloth_sft.export.runtime`, `UNSLOTH_SFT_BUILD_LLAMA=1 bash scripts/setup.sh`, or the first
`serve` / `eval --gguf`) runs cmake + ninja in TREE/build under a file lock, so two processes never build at once;
a marker written last (atomically) says the build finished: a killed build is resumed, never used half-done.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import sys
import time
from pathlib import Path

from unsloth_sft.core.errors import RunError
from unsloth_sft.core.files import write_json
from unsloth_sft.core.progress import duration
from unsloth_sft.export.gguf import LLAMA_CPP_PYTHON, Relay, llama_cpp_dir, run_relayed
from unsloth_sft.export.llama_cpp import BUILD_MINUTES, BUILT_MARK, HOW_TO_BUILD, SERVER, TARGETS, build_dir, built

CONFIGURE = ["-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF"]
LOCK = ".unsloth_sft-build.lock"  # in TREE: one build at a time, across processes
NINJA_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]")


def missing_build_tools() -> str | None:
    """One line naming what to install when cmake, ninja or a C++ compiler is missing, else None."""
    need = [name for name in ("cmake", "ninja") if shutil.which(name) is None]
    if not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")):
        need.append("a C++ compiler")
    if not need:
        return None
    return (
        f"building llama.cpp's runtime needs {', '.join(need)}: install them (Debian/Ubuntu: apt-get install cmake "
        "ninja-build g++; or pip install cmake ninja) and rerun"
    )


class BuildRelay(Relay):
    """ninja's `[n/N] Building ...` lines as one progress line."""

    def piece(self, text: str) -> None:
        if self.verbose and text.strip():
            print(text, flush=True)
        if m := NINJA_LINE.match(text):
            bar = self._bar("compiling", int(m[2]), "step")
            bar.total = int(m[2])  # ninja's total can grow once it has read the generated rules
            bar.update(int(m[1]) - bar.n)


@contextlib.contextmanager
def build_lock(root: Path):
    """An exclusive OS lock on TREE/.unsloth_sft-build.lock (it dies with its process); says so when it waits."""
    fd = os.open(root / LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"llama.cpp: another process is building in {build_dir(root)}; waiting for it", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def build_runtime(root: Path | None = None, jobs: int | None = None) -> Path:
    """llama-server and llama-quantize built in TREE/build (once; resumed if a build was killed); llama-server's path."""
    root = root or llama_cpp_dir()
    with build_lock(root):
        if built(root):
            return build_dir(root) / "bin" / SERVER
        problem = missing_build_tools()
        if problem:
            raise RunError(problem)
        jobs = jobs or max(1, os.cpu_count() or 2)
        print(
            f"llama.cpp: building {' and '.join(TARGETS)} once in {build_dir(root)} ({BUILD_MINUTES}; {jobs} jobs)",
            flush=True,
        )
        started = time.perf_counter()
        steps = [
            ("configure", ["cmake", "-S", str(root), "-B", str(build_dir(root)), *CONFIGURE]),
            ("compile", ["cmake", "--build", str(build_dir(root)), "--target", *TARGETS, f"-j{jobs}"]),
        ]
        for name, cmd in steps:
            code, text = run_relayed(cmd, BuildRelay("llama.cpp build"))
            if code != 0:
                lines = [line for line in text.splitlines() if "error" in line.lower()] or text.splitlines() or [""]
                raise RunError(f"llama.cpp's {name} step failed ({' '.join(cmd[:3])} ...): {lines[-1].strip()[:300]}")
        seconds = time.perf_counter() - started
        write_json(
            build_dir(root) / BUILT_MARK,
            {
                "targets": list(TARGETS),
                "seconds": round(seconds, 1),
                "built": time.strftime("%Y-%m-%d %H:%M:%S"),
                "llama_cpp_python_sdist": LLAMA_CPP_PYTHON,
                "cmake": CONFIGURE,
                "jobs": jobs,
            },
        )
        print(f"llama.cpp: built {', '.join(TARGETS)} in {duration(seconds)} ({build_dir(root) / 'bin'})", flush=True)
        return build_dir(root) / "bin" / SERVER


def ensure_server(build: bool = True) -> Path:
    """llama-server, built now on first use when `build` (else a one-line error saying how to build it)."""
    root = llama_cpp_dir()
    found = build_dir(root) / "bin" / SERVER if built(root) else None
    if found is not None:
        return found
    if not build:
        raise RunError(f"llama.cpp's llama-server is not built yet; {HOW_TO_BUILD}")
    return build_runtime(root)


def main() -> int:
    """`python -m unsloth_sft.export.runtime`: build the runtime now (nothing to do when it is built)."""
    try:
        root = llama_cpp_dir()
        mark = built(root)
        if mark:
            print(f"llama.cpp's runtime is built ({build_dir(root) / 'bin'}, in {duration(mark.get('seconds'))})")
            return 0
        build_runtime(root)
    except RunError as err:
        print(f"unsloth-sft: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unsloth-sft: interrupted (the build resumes where it stopped next time)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
