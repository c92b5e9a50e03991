"""Latency of a network: the median wall time of a forward pass, measured on a device.

Warm-up passes first (cuDNN autotuning, allocator, lazy init), then `repeats` timed passes in eval
mode without autograd; on CUDA each pass is bracketed by `torch.cuda.synchronize` so the time is the
kernels', not the launch's. The median resists the outliers of a shared machine.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["measure_latency"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_latency(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1,
                    device: torch.device | str = "cpu", warmup: int = 5, repeats: int = 20) -> float:
    """Median seconds of one forward pass of `model` (moved to `device`) on `batch_size` inputs."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    device = torch.device(device)
    model.to(device)
    was_training = model.training
    model.eval()
    try:
        x = torch.randn(batch_size, *input_shape, device=device)
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            model(x)
            _sync(device)
            times.append(time.perf_counter() - t0)
        return float(statistics.median(times))
    finally:
        model.train(was_training)
