"""Per-choice cost tables: what a method needs for a differentiable expected cost without re-tracing.

* `conv_macs`, `conv_params`: closed forms of one convolution (MACs = multiply-accumulates, what the
  papers call FLOPs; the same numbers `count_macs` reports for a conv).
* `op_costs(op, C, stride, H, W)`: MACs and params of one candidate op of `nas_common.registry.OPS`,
  counted once on a real module with `count_macs` and cached; NAT compares an op with its skip/null
  replacement with it, ISTA-NAS and the harness can price an edge.
* `ConvShape`: one conv (or the classifier) with its input and output widths, kernel, stride and
  output size, plus which conv's width choice sets its input and output width; the resnet space's
  `resnet_conv_shapes(spec, input)` lists those of a spec. TAS's expected MACs, sum over convs of
  k^2*H*W*E[C_in]*E[C_out] weighted by the probability that the conv's block is kept, is then
  `expected_macs(shapes, E[widths], P[keep])`.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .macs import count_macs
from .params import count_params

__all__ = ["ConvShape", "conv_macs", "conv_params", "op_costs", "shapes_macs",
           "shapes_params", "expected_macs"]


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_macs(c_in: int, c_out: int, k: int | Sequence[int], h_out: int, w_out: int, groups: int = 1) -> int:
    """Multiply-accumulates of a conv: (c_in/groups) * c_out * kh * kw * h_out * w_out (bias not counted)."""
    kh, kw = _pair(k)
    return (c_in // groups) * c_out * kh * kw * h_out * w_out


def conv_params(c_in: int, c_out: int, k: int | Sequence[int], groups: int = 1, bias: bool = False,
                bn: bool = False) -> int:
    """Parameters of a conv (weights, optional bias) and, with `bn=True`, of an affine BatchNorm after it."""
    kh, kw = _pair(k)
    return (c_in // groups) * c_out * kh * kw + (c_out if bias else 0) + (2 * c_out if bn else 0)


@functools.lru_cache(maxsize=4096)
def _op_costs(op_name: str, C: int, stride: int, H: int, W: int, affine: bool) -> tuple[int, int]:
    from ..registry import OPS

    # building the module draws its initial weights: keep the caller's RNG stream untouched, or a
    # search would depend on whether this (cached) count ran before in the process
    with torch.random.fork_rng(devices=[]):
        op = OPS.get(op_name)(C, stride, affine)
    return count_macs(op, (C, H, W)), count_params(op)


def op_costs(op_name: str, C: int, stride: int, H: int, W: int, affine: bool = True) -> dict[str, int]:
    """{"macs", "params"} of candidate op `op_name` (a name in OPS) on a (C, H, W) input at `stride`.

    Counted once on the real module (so every op of the registry is covered, including ones added
    later) and cached. `skip_connect` at stride 2 is a FactorizedReduce (params > 0); pooling, identity
    and `none` cost nothing. `affine=True` counts BN scales as the discrete network has them.
    """
    macs, params = _op_costs(str(op_name), int(C), int(stride), int(H), int(W), bool(affine))
    return {"macs": macs, "params": params}


# ---------------------------------------------------------------------------------------------------
# resnet shapes
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvShape:
    """One conv (or the classifier, kind "linear") of a resnet network.

    `in_from` is the index of the record whose output width is this layer's input width (-1: the
    network input, fixed at `c_in`); `out_from` is the index of the record whose width choice sets this
    layer's output width (itself for a conv; the block's last conv for a projection shortcut, which
    must match it for the residual add; -1 for the classifier, fixed at `c_out` = classes).
    `stage`/`block` locate it (0-based; -1 for the stem and the classifier): with depth d kept in a
    stage, the records with block < d exist.
    """

    index: int
    name: str  # module path in the built network: "conv1", "layer2.0.conv1", "layer2.0.downsample.0", "fc"
    kind: str  # "conv" or "linear"
    c_in: int
    c_out: int
    k: int
    stride: int
    h_out: int
    w_out: int
    in_from: int
    out_from: int
    stage: int = -1
    block: int = -1
    groups: int = 1

    @property
    def macs(self) -> int:
        return conv_macs(self.c_in, self.c_out, self.k, self.h_out, self.w_out, self.groups)

    @property
    def params(self) -> int:
        """Weights (+ BN after a conv, + bias of the classifier), as count_params counts them."""
        if self.kind == "linear":
            return self.c_in * self.c_out + self.c_out
        return conv_params(self.c_in, self.c_out, self.k, self.groups, bn=True)


def shapes_macs(shapes: Sequence[ConvShape]) -> int:
    """Total MACs of the layers in `shapes` (equals count_macs of the built network)."""
    return sum(r.macs for r in shapes)


def shapes_params(shapes: Sequence[ConvShape]) -> int:
    """Total params of the layers in `shapes` with their BNs (equals count_params of the built network)."""
    return sum(r.params for r in shapes)


def expected_macs(shapes: Sequence[ConvShape], widths: torch.Tensor, keep: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Differentiable E[MACs] = sum_l keep_l * k_l^2 * H_l * W_l * E[C_in,l] * E[C_out,l] / groups_l.

    `widths[i]` is the expected output width of record i (used where a record's `in_from`/`out_from`
    points at i; e.g. sum_j p_ij * choice_ij of conv i's width distribution); `keep[i]` the probability
    that layer i exists (TAS: P(stage depth > block)); default 1. The input width of the first conv and
    the classifier's output width are fixed. With one-hot widths and keep this is exactly the MACs of
    the chosen network when no projection shortcut appears or disappears (TAS's approximation).
    """
    n = len(shapes)
    if widths.shape[-1] != n:
        raise ValueError(f"widths must have one entry per record ({n}), got shape {tuple(widths.shape)}")
    dev, dt = widths.device, widths.dtype
    in_from = torch.tensor([r.in_from for r in shapes], device=dev)
    out_from = torch.tensor([r.out_from for r in shapes], device=dev)
    c_in = torch.tensor([float(r.c_in) for r in shapes], device=dev, dtype=dt)
    c_out = torch.tensor([float(r.c_out) for r in shapes], device=dev, dtype=dt)
    coef = torch.tensor([r.k * r.k * r.h_out * r.w_out / r.groups for r in shapes], device=dev, dtype=dt)
    e_in = torch.where(in_from >= 0, widths[..., in_from.clamp(min=0)], c_in)
    e_out = torch.where(out_from >= 0, widths[..., out_from.clamp(min=0)], c_out)
    terms = coef * e_in * e_out
    if keep is not None:
        terms = terms * keep
    return terms.sum(-1)
