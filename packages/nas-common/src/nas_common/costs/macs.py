"""MACs through torch.utils.flop_counter: one multiply-accumulate = 2 FLOPs as torch counts them.

Papers (ResNet, DARTS, TAS) say "FLOPs" for multiply-accumulates of convolutions and linear layers;
that is what this counts (BN, ReLU, pooling and additions are not counted, as in those papers).
The counter sees every aten conv/matmul call, so functional convs (masked weights, F.conv2d) count too.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@contextlib.contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """One intra-op thread on CPU while counting.

    A batch-1 forward of small convs is dominated by per-op overhead; extra intra-op threads only
    add synchronisation, and on a busy shared CPU they make counting 5-20x slower (measured).
    """
    if device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...], device: torch.device | str = "cpu") -> int:
    """Multiply-accumulates of one forward pass of `model` on a single input of `input_shape` (C, H, W)."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    try:
        x = torch.zeros(1, *input_shape, device=device)
        with _one_thread(device), FlopCounterMode(display=False) as counter:
            model(x)
        return int(counter.get_total_flops()) // 2
    finally:
        model.train(was_training)
