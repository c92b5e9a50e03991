"""Cells in NAT's DAG form, and the conversion to and from DARTS genotypes.

A cell is a DAG with two input nodes (0: c_{k-2}, 1: c_{k-1}) and `n` intermediate nodes (2 .. n+1).
Intermediate node t has exactly two incoming edges, listed in order: edge 2(t-2) and 2(t-2)+1. Each
edge carries an op name (a real op "O", `skip_connect` "S", or the null op "N"). This is the DARTS
genotype form (`[[op, input], ...]`, two entries per node), so any published DARTS-space genotype, a
user's arch.json of the `darts` space, and hand-crafted cells are all NAT inputs.

The hand-crafted cells are nas_common's genotypes `resnet-block` and `vgg-block` and this package's
`mobilenetv2-block` (see `nat_nas.archs`): `conv_*`, `sep_conv_3x3`, `skip_connect` and null edges,
output = the last node.

A cell keeps its `concat` (the output nodes) through every transformation; NAT's uniform prior
concatenates every intermediate node (DARTS' "fully concat").
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nas_common.errors import ArchFileError

#: the null op of the DARTS space (NAT's "N"); genotypes may also write it "null"
NULL_OP = "none"
NULL_ALIASES = frozenset({"none", "null"})
SKIP_OP = "skip_connect"


def canonical_op(op: str) -> str:
    """The op name as the DARTS space spells it (`null` -> `none`)."""
    return NULL_OP if op in NULL_ALIASES else op


def edge_kind(op: str) -> str:
    """NAT's edge class: "N" (null), "S" (skip connection) or "O" (any other op)."""
    op = canonical_op(op)
    if op == NULL_OP:
        return "N"
    if op == SKIP_OP:
        return "S"
    return "O"


@dataclass(frozen=True)
class Cell:
    """One cell: per edge (in genotype order) its op name and its source node; `concat` the output nodes."""

    ops: tuple[str, ...]
    inputs: tuple[int, ...]
    concat: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.ops) != len(self.inputs) or len(self.ops) % 2 or not self.ops:
            raise ArchFileError(f"a cell needs two (op, input) edges per node, got {len(self.ops)} ops "
                                f"and {len(self.inputs)} inputs")
        for e, src in enumerate(self.inputs):
            node = 2 + e // 2
            if not 0 <= src < node:
                raise ArchFileError(f"edge {e} (into node {node}) takes input {src}: inputs of node {node} "
                                    f"must be in 0..{node - 1}")

    @property
    def num_nodes(self) -> int:
        """Intermediate nodes."""
        return len(self.ops) // 2

    @property
    def num_edges(self) -> int:
        return len(self.ops)

    @property
    def targets(self) -> tuple[int, ...]:
        """The node each edge feeds."""
        return tuple(2 + e // 2 for e in range(self.num_edges))

    def kinds(self) -> tuple[str, ...]:
        return tuple(edge_kind(op) for op in self.ops)

    def with_ops(self, ops: Sequence[str]) -> Cell:
        return Cell(tuple(ops), self.inputs, self.concat)

    def adjacency(self) -> torch.Tensor:
        """(n+2, n+2) edge counts, `A[to, from]` (two edges from the same node count twice)."""
        n = self.num_nodes + 2
        a = torch.zeros(n, n)
        a.index_put_((torch.tensor(self.targets), torch.tensor(self.inputs)), torch.ones(self.num_edges),
                     accumulate=True)
        return a

    # ---- DARTS genotype ---------------------------------------------------------------------------
    def to_genotype(self) -> list[list[Any]]:
        return [[op, src] for op, src in zip(self.ops, self.inputs, strict=False)]

    @classmethod
    def from_genotype(cls, pairs: Sequence[Sequence[Any]], concat: Sequence[int] | None = None,
                      where: str = "cell") -> Cell:
        """A cell from DARTS pairs `[[op, input], ...]` (two per node)."""
        ops, inputs = [], []
        for i, pair in enumerate(pairs):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ArchFileError(f"{where}[{i}] must be [op, input], got {pair!r}")
            op, src = pair
            if not isinstance(op, str) or not isinstance(src, int) or isinstance(src, bool):
                raise ArchFileError(f"{where}[{i}] must be [op name, input node], got {pair!r}")
            ops.append(op)
            inputs.append(src)
        try:
            return cls(tuple(ops), tuple(inputs), tuple(concat) if concat is not None else None)
        except ArchFileError as e:
            raise ArchFileError(f"{where}: {e}") from None


@dataclass(frozen=True)
class CellPair:
    """The two cell types of a DARTS-space network."""

    normal: Cell
    reduce: Cell

    def cells(self) -> tuple[Cell, Cell]:
        return self.normal, self.reduce

    def to_spec(self) -> dict[str, Any]:
        """A DARTS-space spec (genotype) with the same concat lists as the input."""
        spec: dict[str, Any] = {"normal": self.normal.to_genotype(), "reduce": self.reduce.to_genotype()}
        for name, cell in (("normal", self.normal), ("reduce", self.reduce)):
            spec[f"{name}_concat"] = list(cell.concat) if cell.concat is not None else \
                list(range(2, 2 + cell.num_nodes))
        return spec

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> CellPair:
        if not isinstance(spec, dict) or "normal" not in spec or "reduce" not in spec:
            raise ArchFileError("NAT transforms DARTS-space cells: the spec needs 'normal' and 'reduce' lists "
                                "of [op, input] pairs")
        return cls(Cell.from_genotype(spec["normal"], spec.get("normal_concat"), "spec.normal"),
                   Cell.from_genotype(spec["reduce"], spec.get("reduce_concat"), "spec.reduce"))


def random_cell(generator: torch.Generator | None, ops: Sequence[str], nodes: int = 4) -> Cell:
    """NAT's uniform prior p(beta): per node two inputs uniformly among its predecessors (repeats allowed)
    and per edge an op uniformly from `ops` (the official code leaves null out of `ops`)."""
    n_edges = 2 * nodes
    node = torch.arange(n_edges) // 2 + 2
    u = torch.rand(n_edges, generator=generator)
    inputs = (u * node).floor().long().clamp_max(node - 1)
    op_idx = torch.randint(len(ops), (n_edges,), generator=generator)
    return Cell(tuple(ops[i] for i in op_idx.tolist()), tuple(inputs.tolist()))


def sample_prior(n_cells: int, nodes: int, n_ops: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`random_cell` for `n_cells` cells at once, on `device`: (ops, inputs), both (n_cells, 2*nodes) long,
    ops indexing the op list the prior draws from. No host round trip (the search step's sampler)."""
    n_edges = 2 * nodes
    node = (torch.arange(n_edges, device=device) // 2 + 2).expand(n_cells, n_edges)
    u = torch.rand(n_cells, n_edges, generator=generator, device=device)
    inputs = torch.minimum((u * node).long(), node - 1)
    ops = torch.randint(n_ops, (n_cells, n_edges), generator=generator, device=device)
    return ops, inputs


def adjacency_from_inputs(inputs: torch.Tensor) -> torch.Tensor:
    """(B, n+2, n+2) edge counts `A[to, from]` of cells given by their (B, 2n) input indices (the tensor
    form of `Cell.adjacency`, computed where `inputs` lives). One-hots by comparison: `F.one_hot` reads
    its input's range on the host (a sync inside the policy step)."""
    n_edges = inputs.shape[-1]
    n = n_edges // 2 + 2
    nodes = torch.arange(n, device=inputs.device)
    targets = (torch.arange(n_edges, device=inputs.device) // 2 + 2).unsqueeze(-1) == nodes
    sources = inputs.unsqueeze(-1) == nodes
    return torch.einsum("et,bes->bts", targets.float(), sources.float())
