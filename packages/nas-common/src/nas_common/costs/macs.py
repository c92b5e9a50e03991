"""MACs through torch.utils.flop_counter: one multiply-accumulate = 2 FLOPs as torch counts them.

Papers (ResNet, DARTS, TAS) say "FLOPs" for multiply-accumulates of convolutions and linear layers;
that is what this counts (BN, ReLU, pooling and additions are not counted, as in those papers).
The counter sees every aten conv/matmul call, so functional convs (masked weights, F.conv2d) count too.

Counting uses torch.utils.flop_counter's per-op formulas (`flop_registry`) in a minimal dispatch
mode: FlopCounterMode itself also tracks modules and decomposes uncounted ops (BatchNorm, ...) in
Python, which makes it 2x slower on a DARTS network for the same total (tests check they agree).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

try:
    from torch.utils.flop_counter import flop_registry as _FLOP_REGISTRY
except ImportError:  # pragma: no cover - older/newer torch: fall back to FlopCounterMode
    _FLOP_REGISTRY = None


class _FlopSum(TorchDispatchMode):
    """Runs every op and adds torch's FLOP formula of the counted ones (conv, mm, addmm, bmm, sdpa, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = _FLOP_REGISTRY.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


# TorchDispatchMode wraps __torch_dispatch__ in torch._disable_dynamo, which imports torch._dynamo (800
# modules, seconds) on first use and adds a frame-callback switch to every op. Counting is never traced
# by dynamo, so use the plain method (`__wrapped__`, kept by functools.wraps) when torch exposes it.
_FlopSum.__torch_dispatch__ = getattr(_FlopSum.__torch_dispatch__, "__wrapped__", _FlopSum.__torch_dispatch__)


def count_flops_reference(model: nn.Module, input_shape: tuple[int, ...], device: torch.device | str = "cpu") -> int:
    """FLOPs (2 per MAC) by torch's FlopCounterMode itself: the reference `count_macs` is tested against."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape, device=device))
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


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
        if _FLOP_REGISTRY is None:  # pragma: no cover
            with _one_thread(device), FlopCounterMode(display=False) as counter:
                model(x)
            return int(counter.get_total_flops()) // 2
        with _one_thread(device), _FlopSum() as counter:
            model(x)
        return int(counter.flops) // 2
    finally:
        model.train(was_training)
