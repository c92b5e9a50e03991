"""Closed-form MACs and params of the DARTS discrete network of a genotype (`darts` and `darts-bn`).

What `count_macs` / `count_params` report for `DartsSpace.build(spec, net)` (one input, eval mode, so
the auxiliary head neither runs nor counts), from the genotype and the net settings alone, without
building or tracing anything: the harness asks for the costs of many random architectures of a space,
and a closed form is also an independent check of the network builder (the space tests compare the
two). It follows `DartsNetwork`/`DartsCell` term by term:

- stem: CIFAR, a 3x3 conv to 3C (+BN); ImageNet, two stride-2 3x3 convs to C/2 and C, then a stride-2
  3x3 conv (each +BN);
- per cell, the inputs a live entry reads are preprocessed (ReLU-1x1 conv-BN, or FactorizedReduce after
  a reduction cell: two stride-2 1x1 convs into C/2 + C/2 channels, +BN); each live entry of a needed
  node is its op at stride 2 when it reads a cell input of a reduction cell (none/null entries, dead
  nodes and nodes that feed nothing are not built, as `plan_cell` decides);
- the classifier on the last cell's output (global pooling is free).

A conv counts (C_in/groups)·C_out·k_h·k_w·H_out·W_out MACs and as many weights (no bias); an affine BN
2C params and no MACs; pooling and the identity nothing, except that the `darts-bn` network puts an
affine BN after each of them (`bn_after_param_free`). Ops this module has no formula for make it
return None (the caller then counts the built network).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nas_common.ops import is_null_op
from nas_common.spaces.darts_blocks import plan_cell, reduction_layers

__all__ = ["OP_FORMULAS", "darts_costs"]


def _out(size: int, k: int, stride: int, pad: int, dilation: int = 1) -> int:
    """Output size of a convolution or pooling (floor mode)."""
    return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def _conv(c_in: int, c_out: int, kh: int, kw: int, h_out: int, w_out: int, groups: int = 1) -> tuple[int, int]:
    """(MACs, params) of a bias-free conv."""
    weights = (c_in // groups) * c_out * kh * kw
    return weights * h_out * w_out, weights


#: op name -> f(C, stride, H, W, bn_after_param_free) -> (MACs, params, H_out, W_out)
OpFormula = Callable[[int, int, int, int, bool], tuple[int, int, int, int]]


def _pool(C: int, s: int, h: int, w: int, bn: bool) -> tuple[int, int, int, int]:
    return 0, 2 * C if bn else 0, _out(h, 3, s, 1), _out(w, 3, s, 1)


def _skip(C: int, s: int, h: int, w: int, bn: bool) -> tuple[int, int, int, int]:
    if s == 1:
        return 0, 2 * C if bn else 0, h, w
    ho, wo = -(-h // 2), -(-w // 2)  # FactorizedReduce: two 1x1 convs into C/2 + C/2 channels, then BN
    macs, params = _conv(C, C, 1, 1, ho, wo)
    return macs, params + 2 * C, ho, wo


def _sep(k: int) -> OpFormula:
    def f(C: int, s: int, h: int, w: int, bn: bool) -> tuple[int, int, int, int]:
        ho, wo = _out(h, k, s, (k - 1) // 2), _out(w, k, s, (k - 1) // 2)
        dw_m, dw_p = _conv(C, C, k, k, ho, wo, groups=C)
        pw_m, pw_p = _conv(C, C, 1, 1, ho, wo)
        return 2 * (dw_m + pw_m), 2 * (dw_p + pw_p + 2 * C), ho, wo  # two ReLU-dw-pw-BN blocks

    return f


def _dil(k: int) -> OpFormula:
    def f(C: int, s: int, h: int, w: int, bn: bool) -> tuple[int, int, int, int]:
        ho, wo = _out(h, k, s, k - 1, 2), _out(w, k, s, k - 1, 2)
        dw_m, dw_p = _conv(C, C, k, k, ho, wo, groups=C)
        pw_m, pw_p = _conv(C, C, 1, 1, ho, wo)
        return dw_m + pw_m, dw_p + pw_p + 2 * C, ho, wo

    return f


def _plain(k: int) -> OpFormula:
    def f(C: int, s: int, h: int, w: int, bn: bool) -> tuple[int, int, int, int]:
        ho, wo = _out(h, k, s, (k - 1) // 2), _out(w, k, s, (k - 1) // 2)
        macs, params = _conv(C, C, k, k, ho, wo)
        return macs, params + 2 * C, ho, wo

    return f


def _conv7x1_1x7(C: int, s: int, h: int, w: int, bn: bool) -> tuple[int, int, int, int]:
    wo = _out(w, 7, s, 3)
    ho = _out(h, 7, s, 3)
    m1, p1 = _conv(C, C, 1, 7, h, wo)
    m2, p2 = _conv(C, C, 7, 1, ho, wo)
    return m1 + m2, p1 + p2 + 2 * C, ho, wo


OP_FORMULAS: dict[str, OpFormula] = {
    "max_pool_3x3": _pool, "avg_pool_3x3": _pool, "skip_connect": _skip,
    "sep_conv_3x3": _sep(3), "sep_conv_5x5": _sep(5), "sep_conv_7x7": _sep(7),
    "dil_conv_3x3": _dil(3), "dil_conv_5x5": _dil(5),
    "conv_1x1": _plain(1), "conv_3x3": _plain(3), "conv_5x5": _plain(5), "conv_7x1_1x7": _conv7x1_1x7,
}


def _relu_conv_bn(c_in: int, c_out: int, h: int, w: int) -> tuple[int, int]:
    macs, params = _conv(c_in, c_out, 1, 1, h, w)
    return macs, params + 2 * c_out


def darts_costs(spec: Mapping[str, Any], net: Mapping[str, Any], bn_after_param_free: bool = False
                ) -> dict[str, float] | None:
    """{"macs", "params"} of the DARTS network of a validated `spec` and `net` (see the module
    docstring); None when the genotype uses an op without a formula here."""
    ops_of = {"normal": spec["normal"], "reduce": spec["reduce"]}
    if any(op not in OP_FORMULAS and not is_null_op(op) for cell in ops_of.values() for op, _ in cell):
        return None
    C, layers, classes = int(net["C"]), int(net["layers"]), int(net["num_classes"])
    c_in, h, w = (int(v) for v in net["input"])
    macs = params = 0

    def add(mp: tuple[int, int]) -> None:
        nonlocal macs, params
        macs += mp[0]
        params += mp[1]

    if net.get("stem", "cifar") == "imagenet":
        h1, w1 = _out(h, 3, 2, 1), _out(w, 3, 2, 1)
        m, p = _conv(c_in, C // 2, 3, 3, h1, w1)
        add((m, p + 2 * (C // 2)))
        h2, w2 = _out(h1, 3, 2, 1), _out(w1, 3, 2, 1)
        m, p = _conv(C // 2, C, 3, 3, h2, w2)
        add((m, p + 2 * C))
        h3, w3 = _out(h2, 3, 2, 1), _out(w2, 3, 2, 1)
        m, p = _conv(C, C, 3, 3, h3, w3)
        add((m, p + 2 * C))
        s0, s1 = (C, h2, w2), (C, h3, w3)
        reduction_prev = True
    else:
        m, p = _conv(c_in, 3 * C, 3, 3, h, w)
        add((m, p + 2 * 3 * C))
        s0 = s1 = (3 * C, h, w)
        reduction_prev = False
    reductions = reduction_layers(layers)
    C_curr = C
    for i in range(layers):
        reduction = i in reductions
        if reduction:
            C_curr *= 2
        name = "reduce" if reduction else "normal"
        ops: Sequence[Sequence[Any]] = ops_of[name]
        concat = list(spec[f"{name}_concat"])
        steps = len(ops) // 2
        nodes = [[(2 * n + k, int(ops[2 * n + k][1]), is_null_op(ops[2 * n + k][0])) for k in (0, 1)]
                 for n in range(steps)]
        plan = plan_cell(nodes, concat)
        hin, win = s1[1], s1[2]
        if 0 in plan.needed_inputs:
            if reduction_prev:  # FactorizedReduce: MACs C_in * C_out at the halved size
                add(_relu_conv_bn(s0[0], C_curr, -(-s0[1] // 2), -(-s0[2] // 2)))
            else:
                add(_relu_conv_bn(s0[0], C_curr, s0[1], s0[2]))
        if 1 in plan.needed_inputs:
            add(_relu_conv_bn(s1[0], C_curr, hin, win))
        hn, wn = (-(-hin // 2), -(-win // 2)) if reduction else (hin, win)
        for n in range(steps):
            for slot, j in plan.entries[n]:
                stride = 2 if reduction and j < 2 else 1
                h_op, w_op = (hin, win) if j < 2 else (hn, wn)
                m, p, _, _ = OP_FORMULAS[ops[slot][0]](C_curr, stride, h_op, w_op, bn_after_param_free)
                add((m, p))
        s0, s1 = s1, (len(concat) * C_curr, hn, wn)
        reduction_prev = reduction
    add((s1[0] * classes, s1[0] * classes + classes))
    return {"macs": float(macs), "params": float(params)}
