"""Progress a person can read: a line per stage (`[3/6] train`), and for a long loop tqdm's bar on a terminal or,
when the output is a log (CI, a papermill run, a sweep trial's log), one plain line every ~10 s with the same
figures: done/total, the loop's own numbers, elapsed and ETA. Numbers are written for people (`10,180 tok/s`,
`0.0001`, `1m20s`), never `1.018e+04`."""

from __future__ import annotations

import math
import os
import re
import sys
import time

LOG_INTERVAL_S = 10.0  # a progress line at most this often when stdout is not a terminal
INTERVAL_ENV = "UNSLOTH_SFT_PROGRESS_S"  # set to another number of seconds (the tests use a short one)


def on_terminal() -> bool:
    return sys.stdout.isatty()


def interval() -> float:
    try:
        return float(os.environ.get(INTERVAL_ENV, LOG_INTERVAL_S))
    except ValueError:
        return LOG_INTERVAL_S


def stage(n: int, total: int, name: str, command: str = "") -> None:
    """One line that says which stage of a command runs now: `[5/6] train`, `[eval 2/4] load the model`."""
    print(f"[{command + ' ' if command else ''}{n}/{total}] {name}", flush=True)


def number(x: float | int | None, unit: str = "") -> str:
    """10180.3 -> '10,180', 26.905 -> '26.9', 2.31549 -> '2.315', 0.0001 -> '0.0001', 5e-05 -> '5e-5', None -> '-';
    a unit after."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        text = "-"
    elif isinstance(x, int) or abs(x) >= 100:
        text = f"{x:,.0f}"
    elif abs(x) >= 10:
        text = f"{x:.1f}"
    elif abs(x) >= 1 or x == 0:
        text = f"{x:.3f}".rstrip("0").rstrip(".")
    else:  # below 1e-4 Python writes an exponent (5e-05): people write 5e-5
        text = re.sub(r"e([+-])0+(\d)", r"e\1\2", f"{x:.4g}" if abs(x) >= 1e-4 else f"{x:.3g}")
    return f"{text} {unit}".rstrip()


def duration(seconds: float | None) -> str:
    """75.2 -> '1m15s', 3725 -> '1h02m', 4.2 -> '4.2s', 42.4 -> '42s', None -> '-'."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if round(seconds, 1) < 10:
        return f"{seconds:.1f}s"
    if round(seconds) < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def size(n_bytes: int | float) -> str:
    """A file's size in binary units: 1536 -> '1.5 KiB', 300_000 -> '293 KiB', 5 * 2**30 -> '5 GiB'; never '0 MiB'."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return number(n_bytes / scale, unit)
    return f"{int(n_bytes)} B"


def plural(unit: str, count: int | None) -> str:
    """'step' -> 'steps' (a word); a symbol ('MiB', '%') stays as it is."""
    return f"{unit}s" if count != 1 and unit.isalpha() and unit.islower() else unit


class Progress:
    """Progress of one loop of `total` steps (or MiB...): tqdm on a terminal, a line every `interval()` s elsewhere."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", enabled: bool = True):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.n, self.started, self.printed, self.printed_n = 0, time.perf_counter(), 0.0, -1
        self.postfix = ""
        self.bar = None
        if enabled and on_terminal():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False, disable=False)

    def update(self, n: int = 1, *shown: str) -> None:
        """`n` more steps done; `shown` ("loss 2.315", "191 tok/s") are written beside the count."""
        self.n += n
        if shown:
            self.postfix = ", ".join(shown)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if shown:
                self.bar.set_postfix_str(self.postfix, refresh=False)
            return
        now = time.perf_counter()
        last = self.total is not None and self.n >= self.total and self.printed_n < self.n  # the end: once
        if now - self.printed >= interval() or last:
            self.printed, self.printed_n = now, self.n
            print(self.line(now - self.started), flush=True)

    def line(self, elapsed: float) -> str:
        """'train: 12/60 steps (20%), loss 2.315, 10,180 tok/s | 8.2s elapsed, ETA 33s' (total unknown: no ETA)."""
        if self.total:
            left = (self.total - self.n) * elapsed / self.n if self.n else None
            done = f"{number(self.n)}/{number(self.total)} {plural(self.unit, self.total)}"
            count = f"{done} ({100 * self.n / self.total:.0f}%)"
            eta = f", ETA {duration(max(left, 0.0) if left is not None else None)}"
        else:
            count, eta = f"{number(self.n)} {plural(self.unit, self.n)}", ""
        postfix = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {count}{postfix} | {duration(elapsed)} elapsed{eta}"

    def close(self) -> float:
        """End the loop; returns the seconds it took."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        return time.perf_counter() - self.started

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(iterable, total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True):
    """Iterate with progress (a generator version of `Progress`, for simple loops)."""
    total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
    with Progress(total, desc, unit, enabled) as bar:
        for item in iterable:
            yield item
            bar.update()
