"""Timing helpers shared by the micro-benchmarks: CUDA-synchronised wall clocks, medians over repeats."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["median_time", "median_times_interleaved", "sync"]


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
