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


def _same_shape(args: tuple, kwargs: dict) -> torch.Tensor:
    return torch.empty_like(args[0])


def _batch_norm(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, training = args[0], bool(args[5]) if len(args) > 5 else bool(kwargs.get("training", False))
    stats = (x.shape[1],) if training else (0,)
    return torch.empty_like(x), x.new_empty(stats), x.new_empty(stats)


def _binary(args: tuple, kwargs: dict) -> torch.Tensor:
    a, b = args[0], args[1]
    if not isinstance(b, torch.Tensor) or b.shape == a.shape:
        return torch.empty_like(a, dtype=torch.result_type(a, b))
    if not isinstance(a, torch.Tensor):  # pragma: no cover - aten's Tensor overloads take a tensor first
        return torch.empty_like(b)
    return a.new_empty(torch.broadcast_shapes(a.shape, b.shape), dtype=torch.result_type(a, b))


def _mean(args: tuple, kwargs: dict) -> torch.Tensor:
    x = args[0]
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    dims = range(x.dim()) if dims is None or (isinstance(dims, (list, tuple)) and not dims) else dims
    dims = {d % x.dim() for d in ([dims] if isinstance(dims, int) else dims)}
    shape = [1 if i in dims else n for i, n in enumerate(x.shape) if keep or i not in dims]
    return x.new_empty(shape)


def _cat(args: tuple, kwargs: dict) -> torch.Tensor:
    ts = [t for t in args[0] if t.dim() > 1 or t.numel() > 0]
    dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % ts[0].dim()
    shape = list(ts[0].shape)
    shape[dim] = sum(t.shape[dim] for t in ts)
    fmt = torch.channels_last if ts[0].dim() == 4 and ts[0].is_contiguous(memory_format=torch.channels_last) \
        and not ts[0].is_contiguous() else torch.contiguous_format
    return ts[0].new_empty(shape).contiguous(memory_format=fmt)


# Output shapes of common ops on the meta device, answered by the counter itself: torch runs them
# there through Python decompositions, which import torch._dynamo (seconds) on first use and took 80%
# of a DARTS-V2 meta count (BatchNorm, ReLU). Counted ops (addmm, mm) still get their formula.
_META_SHORTCUTS = {
    torch.ops.aten.native_batch_norm: _batch_norm,
    torch.ops.aten.relu: _same_shape, torch.ops.aten.relu_: lambda a, k: a[0],
    torch.ops.aten.hardtanh: _same_shape, torch.ops.aten.hardtanh_: lambda a, k: a[0],
    torch.ops.aten.sigmoid: _same_shape, torch.ops.aten.gelu: _same_shape,
    torch.ops.aten.add: _binary, torch.ops.aten.sub: _binary, torch.ops.aten.mul: _binary,
    torch.ops.aten.add_: lambda a, k: a[0], torch.ops.aten.mul_: lambda a, k: a[0],
    torch.ops.aten.mean: _mean, torch.ops.aten.cat: _cat,
    torch.ops.aten.addmm: lambda a, k: a[1].new_empty((a[1].shape[0], a[2].shape[1])),
    torch.ops.aten.mm: lambda a, k: a[0].new_empty((a[0].shape[0], a[1].shape[1])),
}


class _FlopSum(TorchDispatchMode):
    """Runs every op and adds torch's FLOP formula of the counted ones (conv, mm, addmm, bmm, sdpa, ...).

    Kept rather than FlopCounterMode: it uses the same formulas (torch.utils.flop_counter's registry)
    but skips module tracking and the Python decomposition of uncounted ops, 2x faster on a DARTS
    network (the tests check both give the same totals). On the meta device nothing is allocated:
    shape-preserving uncounted ops are answered from their input's shape (`_META_SHORTCUTS`)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        shortcut = _META_SHORTCUTS.get(func._overloadpacket)
        first = args[0] if args and not isinstance(args[0], (list, tuple)) else (args[0][0] if args else None)
        if shortcut is not None and isinstance(first, torch.Tensor) and first.is_meta:
            out = shortcut(args, kwargs)
        else:
            out = func(*args, **kwargs)
        formula = _FLOP_REGISTRY.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


class _SkipMetaInit(TorchDispatchMode):
    """While building on the meta device: in-place ops on meta tensors (nn.init's uniform_, normal_,
    fill_, zero_, ...) return their input unchanged, since a meta tensor has no values to fill."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = func._overloadpacket.__name__
        if name.endswith("_") and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


_SkipMetaInit.__torch_dispatch__ = getattr(_SkipMetaInit.__torch_dispatch__, "__wrapped__",
                                           _SkipMetaInit.__torch_dispatch__)


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


def model_device(model: nn.Module) -> torch.device:
    """The device of `model`'s first parameter or buffer (CPU for a module with neither)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...], device: torch.device | str | None = None) -> int:
    """Multiply-accumulates of one forward pass of `model` on a single input of `input_shape` (C, H, W).

    `device` (default: the model's) is where the input is made: a model built on the meta device
    (`with torch.device("meta"): arch.build()`) is counted exactly without allocating anything."""
    from . import check_input_shape

    input_shape = check_input_shape(input_shape)
    was_training = model.training
    model.eval()
    device = model_device(model) if device is None else torch.device(device)
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
