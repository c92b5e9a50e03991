"""Latency of a network: the median wall time of a forward pass, measured on a device.

Timed with `torch.utils.benchmark.Timer`, which synchronises CUDA around each timed block (so the time
is the kernels', not the launch's), pins the intra-op thread count for the measurement and keeps every
sample: `warmup` untimed passes first (cuDNN autotuning, allocator, lazy init), then `repeats` timed
single passes in eval mode without autograd. The median resists the outliers of a shared machine; the
interquartile range says how much they spread.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["latency_stats", "measure_latency"]


@torch.no_grad()
def latency_stats(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1,
                  device: torch.device | str = "cpu", warmup: int = 5, repeats: int = 20,
                  num_threads: int | None = None) -> dict[str, Any]:
    """{"median", "iqr", "mean", "min", "repeats", "device", "threads"} seconds of one forward pass of
    `model` (moved to `device`) on `batch_size` inputs; `num_threads` (default: torch's current count)
    intra-op threads on the CPU."""
    import logging

    # torch.utils.benchmark imports cpp_extension, which warns about CUDA_HOME on machines without CUDA
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils.benchmark import Measurement, Timer

    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    device = torch.device(device)
    model.to(device)
    was_training = model.training
    model.eval()
    threads = num_threads or torch.get_num_threads()
    try:
        x = torch.randn(batch_size, *input_shape, device=device)
        timer = Timer(stmt="model(x)", globals={"model": model, "x": x}, num_threads=threads,
                      label="forward", description=type(model).__name__)
        if warmup:
            timer.timeit(warmup)
        m = Measurement.merge([timer.timeit(1) for _ in range(repeats)])[0]
        times = sorted(m.times)
        return {"median": float(m.median), "iqr": float(m.iqr), "mean": float(m.mean), "min": float(times[0]),
                "repeats": len(times), "device": str(device), "threads": threads}
    finally:
        model.train(was_training)


def measure_latency(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1,
                    device: torch.device | str = "cpu", warmup: int = 5, repeats: int = 20) -> float:
    """Median seconds of one forward pass of `model` (moved to `device`) on `batch_size` inputs."""
    return latency_stats(model, input_shape, batch_size, device, warmup, repeats)["median"]
