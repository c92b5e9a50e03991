"""Genotypes of the DARTS cell space: the `Genotype` value and the published cells by name.

A genotype lists, per intermediate node, two `(op_name, input_index)` pairs (node k of a cell has
inputs 0 = c_{k-2}, 1 = c_{k-1}, 2.. = earlier intermediate nodes), so `normal[2*i]` and
`normal[2*i+1]` feed intermediate node i (state i+2). `normal_concat`/`reduce_concat` name the states
whose concatenation is the cell's output (DARTS: all intermediate nodes, 2..5).

The published cells are transcribed from the papers' figures as the DARTS code lists them (NASNet-A
and AmoebaNet-A and PNAS have 5 nodes; ENAS has 5 and a "loose-end" reduce concat); the two
hand-crafted cells of NAT (a ResNet basic block, a VGG block) are written in the same form with
`conv_3x3`, `skip_connect` and `null` edges and a partial concat.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from ..errors import ArchFileError


class Genotype(NamedTuple):
    """A cell architecture: ops as (op_name, input_index), two per intermediate node, and the concat."""

    normal: list[tuple[str, int]]
    normal_concat: list[int]
    reduce: list[tuple[str, int]]
    reduce_concat: list[int]


def _cell(*nodes: tuple[tuple[str, int], tuple[str, int]]) -> list[tuple[str, int]]:
    """Flatten per-node pairs into DARTS' flat list (2 entries per node)."""
    return [entry for node in nodes for entry in node]


def _genotype(normal: Iterable, normal_concat: Iterable[int], reduce: Iterable,
              reduce_concat: Iterable[int]) -> Genotype:
    return Genotype(list(normal), list(normal_concat), list(reduce), list(reduce_concat))


# DARTS (Liu et al., ICLR 2019): first order (V1) and second order (V2), CIFAR-10.
DARTS_V1 = _genotype(
    _cell((("sep_conv_3x3", 1), ("sep_conv_3x3", 0)), (("skip_connect", 0), ("sep_conv_3x3", 1)),
          (("skip_connect", 0), ("sep_conv_3x3", 1)), (("sep_conv_3x3", 0), ("skip_connect", 2))),
    range(2, 6),
    _cell((("max_pool_3x3", 0), ("max_pool_3x3", 1)), (("skip_connect", 2), ("max_pool_3x3", 0)),
          (("max_pool_3x3", 0), ("skip_connect", 2)), (("skip_connect", 2), ("avg_pool_3x3", 0))),
    range(2, 6),
)

DARTS_V2 = _genotype(
    _cell((("sep_conv_3x3", 0), ("sep_conv_3x3", 1)), (("sep_conv_3x3", 0), ("sep_conv_3x3", 1)),
          (("sep_conv_3x3", 1), ("skip_connect", 0)), (("skip_connect", 0), ("dil_conv_3x3", 2))),
    range(2, 6),
    _cell((("max_pool_3x3", 0), ("max_pool_3x3", 1)), (("skip_connect", 2), ("max_pool_3x3", 1)),
          (("max_pool_3x3", 0), ("skip_connect", 2)), (("skip_connect", 2), ("max_pool_3x3", 1))),
    range(2, 6),
)

# NASNet-A (Zoph et al., CVPR 2018).
NASNET_A = _genotype(
    _cell((("sep_conv_5x5", 1), ("sep_conv_3x3", 0)), (("sep_conv_5x5", 0), ("sep_conv_3x3", 0)),
          (("avg_pool_3x3", 1), ("skip_connect", 0)), (("avg_pool_3x3", 0), ("avg_pool_3x3", 0)),
          (("sep_conv_3x3", 1), ("skip_connect", 1))),
    range(2, 7),
    _cell((("sep_conv_5x5", 1), ("sep_conv_7x7", 0)), (("max_pool_3x3", 1), ("sep_conv_7x7", 0)),
          (("avg_pool_3x3", 1), ("sep_conv_5x5", 0)), (("skip_connect", 3), ("avg_pool_3x3", 2)),
          (("sep_conv_3x3", 2), ("max_pool_3x3", 1))),
    [4, 5, 6],
)

# AmoebaNet-A (Real et al., AAAI 2019).
AMOEBANET_A = _genotype(
    _cell((("avg_pool_3x3", 0), ("max_pool_3x3", 1)), (("sep_conv_3x3", 0), ("sep_conv_5x5", 2)),
          (("sep_conv_3x3", 0), ("avg_pool_3x3", 3)), (("sep_conv_3x3", 1), ("skip_connect", 1)),
          (("skip_connect", 0), ("avg_pool_3x3", 1))),
    [4, 5, 6],
    _cell((("avg_pool_3x3", 0), ("sep_conv_3x3", 1)), (("max_pool_3x3", 0), ("sep_conv_7x7", 2)),
          (("sep_conv_7x7", 0), ("avg_pool_3x3", 1)), (("max_pool_3x3", 0), ("max_pool_3x3", 1)),
          (("conv_7x1_1x7", 0), ("sep_conv_3x3", 5))),
    [3, 4, 6],
)

# PNASNet-5 (Liu et al., ECCV 2018): the same cell for normal and reduce.
_PNAS_CELL = _cell((("sep_conv_5x5", 0), ("max_pool_3x3", 0)), (("sep_conv_7x7", 1), ("max_pool_3x3", 1)),
                   (("sep_conv_5x5", 1), ("sep_conv_3x3", 1)), (("sep_conv_3x3", 4), ("max_pool_3x3", 1)),
                   (("sep_conv_3x3", 0), ("skip_connect", 1)))
PNAS = _genotype(_PNAS_CELL, range(2, 7), _PNAS_CELL, range(2, 7))

# ENAS (Pham et al., ICML 2018), the CIFAR-10 cells as NAT encodes them (5 nodes, loose-end reduce concat).
ENAS = _genotype(
    _cell((("sep_conv_3x3", 1), ("skip_connect", 1)), (("skip_connect", 0), ("sep_conv_5x5", 1)),
          (("avg_pool_3x3", 0), ("sep_conv_3x3", 1)), (("sep_conv_3x3", 0), ("avg_pool_3x3", 1)),
          (("avg_pool_3x3", 0), ("sep_conv_5x5", 1))),
    range(2, 7),
    _cell((("sep_conv_5x5", 0), ("avg_pool_3x3", 1)), (("sep_conv_3x3", 1), ("avg_pool_3x3", 1)),
          (("avg_pool_3x3", 1), ("sep_conv_3x3", 1)), (("avg_pool_3x3", 1), ("sep_conv_5x5", 4)),
          (("sep_conv_5x5", 0), ("sep_conv_3x3", 5))),
    [2, 3, 6],
)

# NAT's hand-crafted cells (Guo et al., NeurIPS 2019), the same for normal and reduce: the output is
# node 5 only. ResNet basic block: x -> conv -> conv, plus the identity from x (node 2 = c_{k-1}).
_RESNET_CELL = _cell((("null", 0), ("skip_connect", 1)), (("null", 0), ("conv_3x3", 2)),
                     (("null", 0), ("conv_3x3", 3)), (("skip_connect", 2), ("skip_connect", 4)))
RESNET_BLOCK = _genotype(_RESNET_CELL, [5], _RESNET_CELL, [5])
# VGG block: x -> conv -> conv (-> max pool in the reduction cell), no shortcut.
VGG_BLOCK = _genotype(
    _cell((("null", 0), ("skip_connect", 1)), (("null", 0), ("conv_3x3", 2)),
          (("null", 0), ("conv_3x3", 3)), (("null", 0), ("skip_connect", 4))),
    [5],
    _cell((("null", 0), ("skip_connect", 1)), (("null", 0), ("conv_3x3", 2)),
          (("null", 0), ("conv_3x3", 3)), (("null", 0), ("max_pool_3x3", 4))),
    [5],
)

#: Published (and hand-crafted) genotypes by name.
GENOTYPES: dict[str, Genotype] = {
    "darts-v1": DARTS_V1,
    "darts-v2": DARTS_V2,
    "enas": ENAS,
    "nasnet-a": NASNET_A,
    "amoebanet-a": AMOEBANET_A,
    "pnas": PNAS,
    "resnet-block": RESNET_BLOCK,
    "vgg-block": VGG_BLOCK,
}


def genotype_by_name(name: str) -> Genotype:
    """The published genotype `name` (`darts-v2`, `enas`, ...; case and `_`/`-` do not matter)."""
    key = name.lower().replace("_", "-")
    if key not in GENOTYPES:
        raise ArchFileError(f"unknown genotype {name!r}: valid: {', '.join(sorted(GENOTYPES))}")
    return GENOTYPES[key]
