"""Helpers of the micro-benchmarks (each package's `benchmarks/`) and the harness report: wall clocks
that wait for the device, medians over repeats, Markdown tables. Installed with nas-common so that a
package's benchmarks run wherever that package is installed."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["markdown_table", "median_time", "median_times_interleaved", "sync"]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a wall clock measures finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def median_time(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds of fn() over `iters` runs after `warmup` untimed ones."""
    return median_times_interleaved([fn], device, warmup, iters)[0]


def median_times_interleaved(fns: list[Callable[[], object]], device: torch.device, warmup: int, iters: int
                             ) -> list[float]:
    """Median seconds of each fn, measured round-robin so that load changes on a shared machine hit all
    of them alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(iters):
        for k, fn in enumerate(fns):
            times[k].append(_timed(fn, device))
    return [statistics.median(t) for t in times]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 1e4 or (abs(v) < 1e-3 and v != 0):
            return f"{v:.3g}"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)
