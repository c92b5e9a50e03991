"""Candidate ops of the DARTS-style cell spaces, by name, with one constructor signature.

Every op is registered in `nas_common.registry.OPS` as `factory(C, stride, affine) -> nn.Module`: it maps
a (N, C, H, W) tensor to (N, C, ceil(H/stride), ceil(W/stride)). Names follow the papers:

- DARTS (Liu et al., 2019): `none`, `max_pool_3x3`, `avg_pool_3x3`, `skip_connect` (identity, or a
  FactorizedReduce at stride 2), `sep_conv_3x3/5x5`, `dil_conv_3x3/5x5`; `PRIMITIVES` lists these 8 in
  DARTS' order.
- NASNet/AmoebaNet/PNAS genotypes also use `sep_conv_7x7` and `conv_7x1_1x7`.
- NAT's spaces add `conv_1x1`, `conv_3x3`, `conv_5x5` (ReLU-Conv-BN) and `null`, its name for "no edge"
  (the same op as `none`). A network skips `none`/`null` edges instead of computing zeros.

`create_op(name, C, stride, affine)` builds one with a clear error for an unknown name.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .registry import OPS

__all__ = [
    "DilConv", "FactorizedReduce", "Identity", "NULL_OPS", "OPS", "PRIMITIVES", "PointwiseConv2d", "ReLUConvBN",
    "SepConv",
    "Conv7x1_1x7", "Zero", "create_op", "is_null_op", "list_ops",
]

#: The 8 candidate ops of DARTS, in the order of its code (`none` first).
PRIMITIVES: tuple[str, ...] = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)

#: Names meaning "this edge does not exist": DARTS' `none` and NAT's `null`.
NULL_OPS: frozenset[str] = frozenset({"none", "null"})


def is_null_op(name: str) -> bool:
    """True for the ops that mean "no edge" (`none`, `null`): they contribute nothing and are skipped."""
    return name in NULL_OPS


# ---- building blocks ---------------------------------------------------------------------------------
class PointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution (no padding) whose stride subsamples the input first: the same function, the
    same weights and state-dict keys, the same counted MACs as `nn.Conv2d(C_in, C_out, 1, stride)`.

    Why: on the CPU, torch 2.14.1's oneDNN weight gradient of a strided 1x1 convolution in channels_last
    with 2 to 7 input channels corrupts the heap (a crash or a hang, seen on AMD EPYC), which the micro
    networks of the tests and every channels_last CPU run with narrow layers hit. Subsampling first
    turns it into a stride-1 1x1 convolution, which is unaffected. CUDA keeps the strided kernel.
    """

    def __init__(self, C_in: int, C_out: int, stride: int = 1, bias: bool = False) -> None:
        super().__init__(C_in, C_out, 1, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        if x.device.type != "cpu" or s == (1, 1):
            return super().forward(x)
        return F.conv2d(x[:, :, :: s[0], :: s[1]], self.weight, self.bias)


def _conv(C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, dilation: int = 1) -> nn.Conv2d:
    """A bias-free conv; a strided 1x1 one as `PointwiseConv2d`."""
    if kernel_size == 1 and padding == 0:
        return PointwiseConv2d(C_in, C_out, stride)
    return nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=False)


class Identity(nn.Identity):
    """The identity; a class of its own so that drop path can tell "skip" apart from real ops."""


class Zero(nn.Module):
    """The `none` op: zeros with the output shape of a stride-`stride` op (no graph, no compute)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return torch.zeros_like(x)
        n, c, h, w = x.shape
        s = self.stride
        return x.new_zeros(n, c, -(-h // s), -(-w // s))

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


class ReLUConvBN(nn.Sequential):
    """ReLU -> Conv(k, stride, padding, dilation; no bias) -> BN: DARTS' preprocessing and plain conv op."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True, dilation: int = 1) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            _conv(C_in, C_out, kernel_size, stride, padding, dilation),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU -> dilated depthwise conv -> pointwise conv -> BN (DARTS' `dil_conv_kxk`)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, dilation: int,
                 affine: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation,
                      groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked DilConv blocks without dilation, the first with the stride (DARTS' `sep_conv_kxk`)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=1, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class Conv7x1_1x7(nn.Sequential):
    """ReLU -> 1x7 conv -> 7x1 conv -> BN, the stride split over both (AmoebaNet's `conv_7x1_1x7`)."""

    def __init__(self, C: int, stride: int, affine: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
            nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
            nn.BatchNorm2d(C, affine=affine),
        )


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing half the pixels: two stride-2 1x1 convs, the second shifted by
    one pixel, concatenated along channels, then BN (DARTS' skip at stride 2 and reduction preprocessing).

    Odd sizes and odd `C_out` work too (the shifted branch is padded back to full size; the second conv
    gets the extra channel); at even sizes this is exactly DARTS' op.
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = PointwiseConv2d(C_in, C_out // 2, stride=2)
        self.conv_2 = PointwiseConv2d(C_in, C_out - C_out // 2, stride=2)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = x[:, :, 1:, 1:]
        h, w = x.shape[-2:]
        if h % 2 or w % 2:  # keep both branches at ceil(size / 2)
            shifted = F.pad(shifted, (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


# ---- the registry ----------------------------------------------------------------------------------
OpFactory = Callable[[int, int, bool], nn.Module]


def _register(name: str, factory: OpFactory) -> None:
    if not OPS.registered(name):
        OPS.register(name, factory)


_FACTORIES: dict[str, OpFactory] = {
    "none": lambda C, stride, affine: Zero(stride),
    "null": lambda C, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine),
    "sep_conv_7x7": lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine),
    "conv_1x1": lambda C, stride, affine: ReLUConvBN(C, C, 1, stride, 0, affine),
    "conv_3x3": lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine),
    "conv_5x5": lambda C, stride, affine: ReLUConvBN(C, C, 5, stride, 2, affine),
    "conv_7x1_1x7": lambda C, stride, affine: Conv7x1_1x7(C, stride, affine),
}
for _name, _factory in _FACTORIES.items():
    _register(_name, _factory)


def create_op(name: str, C: int, stride: int = 1, affine: bool = True) -> nn.Module:
    """The op `name` for C channels at `stride` (1 keeps the size, 2 halves it, rounding up)."""
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride!r}")
    return OPS.get(name)(C, stride, affine)


def list_ops(pattern: str | None = None) -> list[str]:
    """Registered op names (optionally filtered by an fnmatch pattern such as 'sep_conv_*')."""
    return OPS.names(pattern)
