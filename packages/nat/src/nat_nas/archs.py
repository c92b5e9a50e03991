"""NAT's built-in architectures: the hand-crafted MobileNetV2 input cell and the published NAT outputs.

Registered in nas_common's architecture registry when `nat_nas` is imported, so they work as
`input_arch` and by name in Python (`nas_common.get_arch("nat-darts-v2")`); each comes in the `darts`
space on DARTS' CIFAR-10 evaluation network (C 36, 20 cells, auxiliary head) with its MACs and params
counted on the built network.

Transcribed facts (genotypes as published, not code), from the official repositories:

* guoyongcs/NAT `genotypes.py` (commit 239416b): NAT_DARTS (the transform of DARTS-V2), NAT_ENAS,
  NAT_VGG, NAT_ResBlock, the random inputs R1-R5 and their transforms NAT_R1-NAT_R5. Its DARTS, ENAS,
  VGG and ResBlock inputs equal nas_common's `darts-v2`, `enas`, `vgg-block` and `resnet-block`.
* guoyongcs/NATv2 `genotypes.py` (commit be737e9): the MobileNetV2 block as a NAT cell (1x1 expansion
  conv, 3x3 separable conv, 1x1 projection conv, residual in the normal cell) and its NAT transform
  NAT_MobileNetv2 (the NAT++ repository lists the NAT and NAT++ results side by side).

Names: `mobilenetv2-block` (input), `random-r1`..`random-r5` (inputs), and `nat-darts-v2`, `nat-enas`,
`nat-vgg-block`, `nat-resnet-block`, `nat-mobilenetv2-block`, `nat-r1`..`nat-r5` (published outputs).
`PUBLISHED` maps each output to its input's name.

The official code masks no transition, so some published outputs cost more than their inputs on the
built network (a stride-2 skip is a FactorizedReduce; a skip from c_{k-2} into a cell that never read it
adds its 1x1 preprocessing): `published_costs()` counts both, and the README lists them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nas_common.arch import Arch, register_arch
from nas_common.registry import ARCHS
from nas_common.spaces.darts import DARTS_CIFAR_NET, GENOTYPES, genotype_to_spec

#: an official-code cell: (op, from, to) per edge, sorted by `to`, two edges per node
OfficialCell = Sequence[tuple[str, int, int]]


def official_cell(edges: OfficialCell) -> list[list[Any]]:
    """DARTS-form pairs [[op, input], ...] of an official-code cell, checking its two-edges-per-node order."""
    out = []
    for k, (op, src, dst) in enumerate(edges):
        if dst != 2 + k // 2:
            raise ValueError(f"edge {k} ({op}, {src}, {dst}) should feed node {2 + k // 2}")
        out.append([op, src])
    return out


def _spec(normal: OfficialCell, normal_concat: Sequence[int], reduce: OfficialCell,
          reduce_concat: Sequence[int]) -> dict[str, Any]:
    return {"normal": official_cell(normal), "normal_concat": list(normal_concat),
            "reduce": official_cell(reduce), "reduce_concat": list(reduce_concat)}


_MBV2_NORMAL = [("null", 0, 2), ("conv_1x1", 1, 2), ("null", 0, 3), ("sep_conv_3x3", 2, 3), ("null", 0, 4),
                ("conv_1x1", 3, 4), ("skip_connect", 1, 5), ("skip_connect", 4, 5)]
_MBV2_REDUCE = [("null", 0, 2), ("conv_1x1", 1, 2), ("null", 0, 3), ("sep_conv_3x3", 2, 3), ("null", 0, 4),
                ("conv_1x1", 3, 4), ("null", 0, 5), ("skip_connect", 4, 5)]

#: name -> spec of this package's built-in cells (inputs first)
SPECS: dict[str, dict[str, Any]] = {
    "mobilenetv2-block": _spec(_MBV2_NORMAL, [5], _MBV2_REDUCE, [5]),
    "random-r1": _spec(
        [("dil_conv_5x5", 1, 2), ("dil_conv_5x5", 1, 2), ("dil_conv_5x5", 1, 3), ("dil_conv_5x5", 2, 3),
         ("sep_conv_3x3", 0, 4), ("sep_conv_3x3", 3, 4), ("skip_connect", 1, 5), ("max_pool_3x3", 0, 5)],
        range(2, 6),
        [("sep_conv_5x5", 0, 2), ("max_pool_3x3", 0, 2), ("skip_connect", 0, 3), ("sep_conv_3x3", 0, 3),
         ("conv_3x3", 0, 4), ("max_pool_3x3", 2, 4), ("avg_pool_3x3", 2, 5), ("conv_3x3", 3, 5)],
        range(2, 6)),
    "random-r2": _spec(
        [("max_pool_3x3", 1, 2), ("dil_conv_3x3", 0, 2), ("sep_conv_5x5", 2, 3), ("avg_pool_3x3", 2, 3),
         ("dil_conv_5x5", 0, 4), ("skip_connect", 3, 4), ("sep_conv_3x3", 1, 5), ("max_pool_3x3", 3, 5)],
        range(2, 6),
        [("conv_3x3", 1, 2), ("avg_pool_3x3", 1, 2), ("max_pool_3x3", 0, 3), ("dil_conv_5x5", 0, 3),
         ("max_pool_3x3", 0, 4), ("skip_connect", 0, 4), ("dil_conv_5x5", 4, 5), ("skip_connect", 4, 5)],
        range(2, 6)),
    "random-r3": _spec(
        [("conv_3x3", 0, 2), ("skip_connect", 0, 2), ("conv_3x3", 0, 3), ("max_pool_3x3", 0, 3),
         ("sep_conv_5x5", 1, 4), ("sep_conv_3x3", 3, 4), ("avg_pool_3x3", 4, 5), ("avg_pool_3x3", 4, 5)],
        range(2, 6),
        [("skip_connect", 0, 2), ("max_pool_3x3", 0, 2), ("sep_conv_5x5", 2, 3), ("avg_pool_3x3", 0, 3),
         ("skip_connect", 3, 4), ("max_pool_3x3", 2, 4), ("max_pool_3x3", 1, 5), ("sep_conv_5x5", 4, 5)],
        range(2, 6)),
    "random-r4": _spec(
        [("conv_3x3", 1, 2), ("sep_conv_3x3", 1, 2), ("conv_3x3", 2, 3), ("conv_3x3", 2, 3),
         ("sep_conv_3x3", 3, 4), ("conv_3x3", 0, 4), ("max_pool_3x3", 0, 5), ("max_pool_3x3", 4, 5)],
        range(2, 6),
        [("sep_conv_3x3", 0, 2), ("sep_conv_5x5", 1, 2), ("skip_connect", 2, 3), ("sep_conv_3x3", 2, 3),
         ("sep_conv_5x5", 2, 4), ("conv_3x3", 1, 4), ("dil_conv_5x5", 2, 5), ("max_pool_3x3", 4, 5)],
        range(2, 6)),
    "random-r5": _spec(
        [("skip_connect", 0, 2), ("max_pool_3x3", 0, 2), ("max_pool_3x3", 2, 3), ("dil_conv_5x5", 0, 3),
         ("max_pool_3x3", 2, 4), ("conv_3x3", 2, 4), ("conv_3x3", 0, 5), ("sep_conv_5x5", 2, 5)],
        range(2, 6),
        [("dil_conv_5x5", 0, 2), ("avg_pool_3x3", 1, 2), ("sep_conv_5x5", 0, 3), ("avg_pool_3x3", 2, 3),
         ("conv_3x3", 0, 4), ("dil_conv_5x5", 0, 4), ("sep_conv_3x3", 0, 5), ("skip_connect", 4, 5)],
        range(2, 6)),
    # ---- the published NAT outputs
    "nat-darts-v2": _spec(
        [("sep_conv_3x3", 0, 2), ("sep_conv_3x3", 1, 2), ("skip_connect", 0, 3), ("sep_conv_3x3", 1, 3),
         ("skip_connect", 1, 4), ("skip_connect", 0, 4), ("skip_connect", 0, 5), ("dil_conv_3x3", 2, 5)],
        range(2, 6),
        [("max_pool_3x3", 0, 2), ("skip_connect", 1, 2), ("skip_connect", 2, 3), ("skip_connect", 1, 3),
         ("max_pool_3x3", 0, 4), ("null", 2, 4), ("skip_connect", 2, 5), ("max_pool_3x3", 1, 5)],
        range(2, 6)),
    "nat-enas": _spec(
        [("sep_conv_3x3", 1, 2), ("skip_connect", 1, 2), ("skip_connect", 0, 3), ("sep_conv_5x5", 1, 3),
         ("null", 0, 4), ("sep_conv_3x3", 1, 4), ("sep_conv_3x3", 0, 5), ("avg_pool_3x3", 1, 5),
         ("avg_pool_3x3", 0, 6), ("sep_conv_5x5", 1, 6)],
        [2, 3, 4, 5, 6],
        [("sep_conv_5x5", 0, 2), ("avg_pool_3x3", 1, 2), ("sep_conv_3x3", 1, 3), ("avg_pool_3x3", 1, 3),
         ("avg_pool_3x3", 1, 4), ("sep_conv_3x3", 1, 4), ("null", 1, 5), ("sep_conv_5x5", 4, 5),
         ("sep_conv_5x5", 0, 6), ("sep_conv_3x3", 5, 6)],
        [2, 3, 6]),
    "nat-resnet-block": _spec(
        [("null", 0, 2), ("skip_connect", 1, 2), ("skip_connect", 0, 3), ("conv_3x3", 2, 3),
         ("skip_connect", 0, 4), ("conv_3x3", 3, 4), ("skip_connect", 2, 5), ("skip_connect", 4, 5)],
        [5],
        [("null", 0, 2), ("skip_connect", 1, 2), ("skip_connect", 0, 3), ("conv_3x3", 2, 3),
         ("skip_connect", 0, 4), ("conv_3x3", 3, 4), ("skip_connect", 2, 5), ("skip_connect", 4, 5)],
        [5]),
    "nat-vgg-block": _spec(
        [("skip_connect", 0, 2), ("skip_connect", 1, 2), ("null", 0, 3), ("conv_3x3", 2, 3), ("null", 0, 4),
         ("conv_3x3", 3, 4), ("skip_connect", 0, 5), ("skip_connect", 4, 5)],
        [5],
        [("skip_connect", 0, 2), ("skip_connect", 1, 2), ("null", 0, 3), ("conv_3x3", 2, 3), ("null", 0, 4),
         ("conv_3x3", 3, 4), ("skip_connect", 0, 5), ("skip_connect", 4, 5)],
        [5]),
    "nat-mobilenetv2-block": _spec(
        [("null", 0, 2), ("conv_1x1", 1, 2), ("null", 0, 3), ("sep_conv_3x3", 2, 3), ("skip_connect", 0, 4),
         ("conv_1x1", 3, 4), ("skip_connect", 1, 5), ("skip_connect", 4, 5)],
        [5],
        [("null", 0, 2), ("skip_connect", 1, 2), ("skip_connect", 0, 3), ("sep_conv_3x3", 2, 3), ("null", 0, 4),
         ("conv_1x1", 3, 4), ("null", 0, 5), ("skip_connect", 4, 5)],
        [5]),
    "nat-r1": _spec(
        [("skip_connect", 1, 2), ("dil_conv_5x5", 1, 2), ("null", 1, 3), ("dil_conv_5x5", 2, 3),
         ("sep_conv_3x3", 0, 4), ("sep_conv_3x3", 3, 4), ("skip_connect", 1, 5), ("max_pool_3x3", 0, 5)],
        range(2, 6),
        [("sep_conv_5x5", 0, 2), ("max_pool_3x3", 0, 2), ("skip_connect", 0, 3), ("sep_conv_3x3", 0, 3),
         ("skip_connect", 0, 4), ("skip_connect", 2, 4), ("skip_connect", 2, 5), ("conv_3x3", 3, 5)],
        range(2, 6)),
    "nat-r2": _spec(
        [("max_pool_3x3", 1, 2), ("dil_conv_3x3", 0, 2), ("null", 2, 3), ("null", 2, 3),
         ("dil_conv_5x5", 0, 4), ("null", 3, 4), ("sep_conv_3x3", 1, 5), ("max_pool_3x3", 3, 5)],
        range(2, 6),
        [("skip_connect", 1, 2), ("avg_pool_3x3", 1, 2), ("skip_connect", 0, 3), ("dil_conv_5x5", 0, 3),
         ("null", 0, 4), ("skip_connect", 0, 4), ("dil_conv_5x5", 4, 5), ("skip_connect", 4, 5)],
        range(2, 6)),
    "nat-r3": _spec(
        [("conv_3x3", 0, 2), ("skip_connect", 0, 2), ("null", 0, 3), ("max_pool_3x3", 0, 3),
         ("null", 1, 4), ("null", 3, 4), ("avg_pool_3x3", 4, 5), ("null", 4, 5)],
        range(2, 6),
        [("skip_connect", 0, 2), ("max_pool_3x3", 0, 2), ("sep_conv_5x5", 2, 3), ("avg_pool_3x3", 0, 3),
         ("null", 3, 4), ("skip_connect", 2, 4), ("max_pool_3x3", 1, 5), ("sep_conv_5x5", 4, 5)],
        range(2, 6)),
    "nat-r4": _spec(
        [("conv_3x3", 1, 2), ("sep_conv_3x3", 1, 2), ("skip_connect", 2, 3), ("null", 2, 3),
         ("sep_conv_3x3", 3, 4), ("conv_3x3", 0, 4), ("max_pool_3x3", 0, 5), ("null", 4, 5)],
        range(2, 6),
        [("sep_conv_3x3", 0, 2), ("sep_conv_5x5", 1, 2), ("skip_connect", 2, 3), ("sep_conv_3x3", 2, 3),
         ("skip_connect", 2, 4), ("conv_3x3", 1, 4), ("null", 2, 5), ("skip_connect", 4, 5)],
        range(2, 6)),
    "nat-r5": _spec(
        [("skip_connect", 0, 2), ("max_pool_3x3", 0, 2), ("null", 2, 3), ("dil_conv_5x5", 0, 3),
         ("null", 2, 4), ("conv_3x3", 2, 4), ("conv_3x3", 0, 5), ("sep_conv_5x5", 2, 5)],
        range(2, 6),
        [("dil_conv_5x5", 0, 2), ("avg_pool_3x3", 1, 2), ("sep_conv_5x5", 0, 3), ("avg_pool_3x3", 2, 3),
         ("conv_3x3", 0, 4), ("null", 0, 4), ("skip_connect", 0, 5), ("skip_connect", 4, 5)],
        range(2, 6)),
}

#: published NAT output -> the name of its input (a nas_common genotype or one of SPECS)
PUBLISHED: dict[str, str] = {
    "nat-darts-v2": "darts-v2", "nat-enas": "enas", "nat-resnet-block": "resnet-block",
    "nat-vgg-block": "vgg-block", "nat-mobilenetv2-block": "mobilenetv2-block",
    **{f"nat-r{k}": f"random-r{k}" for k in range(1, 6)},
}

_SOURCES = {
    "mobilenetv2-block": "guoyongcs/NATv2 genotypes.py Mobilenetv2 (be737e9)",
    "nat-mobilenetv2-block": "guoyongcs/NATv2 genotypes.py NAT_MobileNetv2 (be737e9)",
    "nat-darts-v2": "guoyongcs/NAT genotypes.py NAT_DARTS (239416b)",
    "nat-enas": "guoyongcs/NAT genotypes.py NAT_ENAS (239416b)",
    "nat-resnet-block": "guoyongcs/NAT genotypes.py NAT_ResBlock (239416b)",
    "nat-vgg-block": "guoyongcs/NAT genotypes.py NAT_VGG (239416b)",
    **{f"random-r{k}": f"guoyongcs/NAT genotypes.py R{k} (239416b)" for k in range(1, 6)},
    **{f"nat-r{k}": f"guoyongcs/NAT genotypes.py NAT_R{k} (239416b)" for k in range(1, 6)},
}


def cell_spec(name: str) -> dict[str, Any]:
    """The `darts` spec of a NAT input or output by name: nas_common's genotypes or this module's cells."""
    if name in SPECS:
        return SPECS[name]
    return genotype_to_spec(GENOTYPES[name])


def builtin_arch(name: str, net: dict[str, Any] | None = None, costs: bool = True) -> Arch:
    """One of SPECS as an Arch on `net` (default DARTS' CIFAR-10 network), costs counted if `costs`."""
    prov: dict[str, Any] = {"source": _SOURCES[name]}
    if name in PUBLISHED:
        prov["input_arch"] = PUBLISHED[name]
    arch = Arch("darts", SPECS[name], dict(net or DARTS_CIFAR_NET), provenance=prov)
    return arch.with_costs() if costs else arch


def published_costs(net: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per published output: its and its input's MACs and params counted on the built `net`."""
    rows = []
    for out, inp in PUBLISHED.items():
        a = builtin_arch(out, net)
        b = Arch("darts", cell_spec(inp), dict(net or DARTS_CIFAR_NET)).with_costs()
        rows.append({"output": out, "input": inp, "macs": a.costs["macs"], "params": a.costs["params"],
                     "input_macs": b.costs["macs"], "input_params": b.costs["params"]})
    return rows


for _name in SPECS:
    if not ARCHS.registered(_name):  # a re-import (reload) must not register twice
        register_arch(_name, lambda n=_name: builtin_arch(n))
