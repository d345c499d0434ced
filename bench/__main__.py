"""`python -m bench NAME ...`: the benchmark NAME (`real`: bench/real.py), run from the repository root."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "real": "bench.real",  # the Gemma-3 270M recipe vs plain TRL, MFU against the measured peak: real.json
    "cpu-real": "bench.cpu_real",
    "cpu-synthetic": "bench.cpu_synthetic",
    "gpu": "bench.gpu",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in BENCHMARKS:
        names = ", ".join(BENCHMARKS)
        print(f"usage: python -m bench NAME [options]; NAME is one of {names}", file=sys.stderr)
        return 2
    return importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
