"""NAT's transition rules and action masks.

Per edge the policy picks one of three actions (`ACTIONS`): keep the edge's op, replace it by a skip
connection, or remove it (null). The paper's cost order c(O) > c(S) > c(N) allows only

    O -> {O, S, N},   S -> {S, N},   N -> {N}

Each kind reaches each allowed target through exactly one action ("keep" stands for the identity, so
S -> S is "keep", never "skip", and N -> N is "keep", never "null"): the policy's distribution over
target cells is then the product of the per-edge softmaxes, with no probability split across two
actions that give the same cell.

Beyond the kinds, "skip" is masked wherever a skip connection would cost more than the op it replaces,
in MACs or in params: at stride 2 a skip is a FactorizedReduce (two 1x1 convs), which costs more than a
pooling op (no params, no counted MACs). The official code masks nothing (null can turn into skip, and
a reduction cell's pooling into a FactorizedReduce): the output could cost more than the input.
With both masks, every transformed cell costs no more than its input, edge by edge.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .cells import NULL_OP, SKIP_OP, Cell, canonical_op, edge_kind

ACTIONS: tuple[str, ...] = ("keep", "skip", "null")
KEEP, SKIP, NULL = 0, 1, 2

#: allowed actions per edge kind, before costs
RULES: dict[str, tuple[bool, bool, bool]] = {
    "O": (True, True, True),
    "S": (True, False, True),
    "N": (True, False, False),
}

#: costs of one op on one edge, at every place in the network where the edge occurs: a flat tuple of
#: numbers (e.g. (macs_1, params_1, macs_2, params_2, ...)); `cost_of(op, stride)`
CostFn = Callable[[str, int], Sequence[float]]


def edge_strides(cell: Cell, reduction: bool) -> tuple[int, ...]:
    """Stride of each edge: 2 for edges leaving an input node of a reduction cell, else 1."""
    return tuple(2 if reduction and src < 2 else 1 for src in cell.inputs)


def not_costlier(new: Sequence[float], old: Sequence[float]) -> bool:
    return all(n <= o + 1e-9 * max(1.0, abs(o)) for n, o in zip(new, old, strict=True))


def transition_mask(cell: Cell, reduction: bool, cost_of: CostFn | None = None) -> torch.Tensor:
    """(edges, 3) bool: which actions each edge may take (rules by kind, then cost)."""
    rows = []
    for op, stride in zip(cell.ops, edge_strides(cell, reduction), strict=False):
        keep, skip, null = RULES[edge_kind(op)]
        if skip and cost_of is not None and not not_costlier(cost_of(SKIP_OP, stride), cost_of(op, stride)):
            skip = False
        rows.append((keep, skip, null))
    return torch.tensor(rows, dtype=torch.bool)


def apply_actions(cell: Cell, actions: Sequence[int] | torch.Tensor) -> Cell:
    """The cell after taking `actions` (indices into ACTIONS), one per edge."""
    acts = actions.tolist() if isinstance(actions, torch.Tensor) else list(actions)
    if len(acts) != cell.num_edges:
        raise ValueError(f"need one action per edge ({cell.num_edges}), got {len(acts)}")
    ops = [op if a == KEEP else SKIP_OP if a == SKIP else NULL_OP for op, a in zip(cell.ops, acts, strict=False)]
    return cell.with_ops(ops)


def actions_between(src: Cell, dst: Cell) -> list[int] | None:
    """The actions that turn `src` into `dst`, or None when no action sequence does (other wiring, or an
    op change other than keep/skip/null)."""
    if src.inputs != dst.inputs or src.num_edges != dst.num_edges:
        return None
    out = []
    for a, b in zip(src.ops, dst.ops, strict=False):
        if canonical_op(a) == canonical_op(b):
            out.append(KEEP)
        elif b == SKIP_OP:
            out.append(SKIP)
        elif canonical_op(b) == NULL_OP:
            out.append(NULL)
        else:
            return None
    return out


def is_reachable(src: Cell, dst: Cell, reduction: bool, cost_of: CostFn | None = None) -> bool:
    """Whether `dst` is one allowed transformation of `src` under the rules (and the cost mask)."""
    acts = actions_between(src, dst)
    if acts is None:
        return False
    mask = transition_mask(src, reduction, cost_of)
    return bool(mask[torch.arange(src.num_edges), torch.tensor(acts)].all())
