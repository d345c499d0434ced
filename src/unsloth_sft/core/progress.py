"""Progress a person can read: a line per stage (`[3/6] train`), and for a long loop tqdm's bar on a terminal or,
when the output is a log (CI, a papermill run, a sweep trial's log), one plain line every ~10 s with the same
figures: done/total, the loop's own numbers, elapsed and ETA. Numbers are written for people (`10,180 tok/s`,
`0.0001`, `1m20s`), never `1.018e+04`."""

from __future__ import annotations

import math
import os
import sys
import time

LOG_INTERVAL_S = 10.0  # a progress line at most this often when stdout is not a terminal
INTERVAL_ENV = "UNSLOTH_SFT_PROGRESS_S"  # set to another number of seconds (the tests use a short one)
LINE = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%){postfix} | {elapsed} elapsed, ETA {remaining}"


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
    """10180.3 -> '10,180', 26.905 -> '26.9', 2.31549 -> '2.315', 0.0001 -> '0.0001', None -> '-'; a unit after."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        text = "-"
    elif isinstance(x, int) or abs(x) >= 100:
        text = f"{x:,.0f}"
    elif abs(x) >= 10:
        text = f"{x:.1f}"
    elif abs(x) >= 1 or x == 0:
        text = f"{x:.3f}".rstrip("0").rstrip(".")
    else:
        text = f"{x:.4g}" if abs(x) >= 1e-4 else f"{x:.1e}".replace("e-0", "e-")
    return f"{text} {unit}".rstrip()


def duration(seconds: float | None) -> str:
    """75.2 -> '1m15s', 3725 -> '1h02m', 4.2 -> '4.2s'."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Progress of one loop of `total` steps: tqdm on a terminal, a line every `interval()` seconds elsewhere."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", enabled: bool = True):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.n, self.started, self.printed = 0, time.perf_counter(), 0.0
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
        if now - self.printed >= interval() or (self.total is not None and self.n >= self.total):
            self.printed = now
            print(self.line(now - self.started), flush=True)

    def line(self, elapsed: float) -> str:
        from tqdm import tqdm

        unit = f"{self.unit}s" if self.total != 1 else self.unit
        return tqdm.format_meter(
            self.n, self.total, elapsed, prefix=self.desc, unit=unit, postfix=self.postfix or None, bar_format=LINE
        )

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
