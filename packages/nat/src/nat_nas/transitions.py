"""NAT's transition rules and action masks.

Per edge the policy picks one of three actions (`ACTIONS`): keep the edge's op, replace it by a skip
connection, or remove it (null). The paper's text, with its cost order c(O) > c(S) > c(N), allows only

    O -> {O, S, N},   S -> {S, N},   N -> {N}                          (rules "paper", the default)

Each kind reaches each allowed target through exactly one action ("keep" stands for the identity, so
S -> S is "keep", never "skip", and N -> N is "keep", never "null"): the policy's distribution over
target cells is then the product of the per-edge softmaxes, with no probability split across two
actions that give the same cell.

The paper's own published VGG and ResNet-block outputs contain null -> skip edges (the official code
masks nothing). Rules "published" allow N -> S too, but only where the built network's cost cannot
rise: a stride-1 skip is the identity (0 MACs, 0 params), and it must read a state that the input
cell already computes (or a cell input it already preprocesses) and feed a node the input cell
already computes. Reviving a dead node, or an input that no live edge reads, would add the ops or the
1x1 preprocessing that nas_common's network leaves out for them.

Beyond the kinds, "skip" is masked wherever a skip connection would cost more than the op it replaces,
in MACs or in params: at stride 2 a skip is a FactorizedReduce (two 1x1 convs), which costs more than a
pooling op (no params, no counted MACs) or a null edge. With both masks every transformed cell costs
no more than its input, edge by edge and on the built network (tested by building and counting).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

from nas_common.spaces.darts_blocks import plan_cell

from .cells import NULL_OP, SKIP_OP, Cell, canonical_op, edge_kind

ACTIONS: tuple[str, ...] = ("keep", "skip", "null")
KEEP, SKIP, NULL = 0, 1, 2

#: the rule sets by name: allowed (keep, skip, null) per edge kind, before costs and liveness
Rules = Literal["paper", "published"]
RULES: dict[str, dict[str, tuple[bool, bool, bool]]] = {
    "paper": {"O": (True, True, True), "S": (True, False, True), "N": (True, False, False)},
    "published": {"O": (True, True, True), "S": (True, False, True), "N": (True, True, False)},
}

#: costs of one op on one edge, at every place in the network where the edge occurs: a flat tuple of
#: numbers (e.g. (macs_1, params_1, macs_2, params_2, ...)); `cost_of(op, stride)`
CostFn = Callable[[str, int], Sequence[float]]


def edge_strides(cell: Cell, reduction: bool) -> tuple[int, ...]:
    """Stride of each edge: 2 for edges leaving an input node of a reduction cell, else 1."""
    return tuple(2 if reduction and src < 2 else 1 for src in cell.inputs)


def not_costlier(new: Sequence[float], old: Sequence[float]) -> bool:
    return all(n <= o + 1e-9 * max(1.0, abs(o)) for n, o in zip(new, old, strict=True))


def computed_states(cell: Cell) -> tuple[set[int], set[int]]:
    """(states the built cell computes, states a computed edge reads), with the cell inputs as 0 and 1
    and the intermediate nodes as 2.. (the liveness of nas_common's DARTS network)."""
    concat = cell.concat if cell.concat is not None else range(2, 2 + cell.num_nodes)
    nodes = [[(k, cell.inputs[2 * t + k], canonical_op(cell.ops[2 * t + k]) == NULL_OP) for k in range(2)]
             for t in range(cell.num_nodes)]
    plan = plan_cell(nodes, concat)
    computed = {t + 2 for t in plan.computed}
    read = set(plan.needed_inputs) | {j for t in plan.computed for _, j in plan.entries[t]}
    return computed, read


def transition_mask(cell: Cell, reduction: bool, cost_of: CostFn | None = None, rules: Rules = "paper",
                    prune_dead: bool = True) -> torch.Tensor:
    """(edges, 3) bool: which actions each edge may take (rules by kind, then liveness, then cost).

    `prune_dead=False` is DARTS' own layout of the built network (`net.prune_dead=false`: both cell
    inputs preprocessed, every node computed): there a stride-1 skip costs nothing wherever it reads and
    feeds, so null -> skip needs no liveness test."""
    if rules not in RULES:
        raise ValueError(f"unknown transition rules {rules!r}: valid: {', '.join(RULES)}")
    table = RULES[rules]
    live = rules != "paper" and prune_dead
    computed, read = computed_states(cell) if live else (set(), set())
    rows = []
    for e, (op, stride) in enumerate(zip(cell.ops, edge_strides(cell, reduction), strict=True)):
        kind = edge_kind(op)
        keep, skip, null = table[kind]
        if skip and kind == "N" and live and not (cell.inputs[e] in read and cell.targets[e] in computed):
            skip = False  # the skip would revive a state the input does not compute
        if skip and cost_of is not None and not not_costlier(cost_of(SKIP_OP, stride), cost_of(op, stride)):
            skip = False
        rows.append((keep, skip, null))
    return torch.tensor(rows, dtype=torch.bool)


def prior_mask_table(vocab: Sequence[str], cost_of: CostFn | None = None) -> torch.Tensor:
    """(len(vocab), 2, 3) bool: the mask row of an edge holding vocab op v at stride 1 (index 0) or 2 (1).

    This is `transition_mask` for the cells of NAT's uniform prior, which hold no null edges (the prior
    draws real ops only), so the rules' null row and the liveness test never apply: one lookup per
    edge gives the mask on the device, without a host round trip in the search step.
    """
    rows = torch.zeros(len(vocab), 2, 3, dtype=torch.bool)
    for v, op in enumerate(vocab):
        for s, stride in enumerate((1, 2)):
            keep, skip, null = RULES["paper"][edge_kind(op)]
            if skip and cost_of is not None and not not_costlier(cost_of(SKIP_OP, stride), cost_of(op, stride)):
                skip = False
            rows[v, s] = torch.tensor((keep, skip, null))
    return rows


def apply_actions(cell: Cell, actions: Sequence[int] | torch.Tensor) -> Cell:
    """The cell after taking `actions` (indices into ACTIONS), one per edge."""
    acts = actions.tolist() if isinstance(actions, torch.Tensor) else list(actions)
    if len(acts) != cell.num_edges:
        raise ValueError(f"need one action per edge ({cell.num_edges}), got {len(acts)}")
    ops = [op if a == KEEP else SKIP_OP if a == SKIP else NULL_OP for op, a in zip(cell.ops, acts, strict=True)]
    return cell.with_ops(ops)


def actions_between(src: Cell, dst: Cell) -> list[int] | None:
    """The actions that turn `src` into `dst`, or None when no action sequence does (other wiring, or an
    op change other than keep/skip/null)."""
    if src.inputs != dst.inputs or src.num_edges != dst.num_edges:
        return None
    out = []
    for a, b in zip(src.ops, dst.ops, strict=True):
        if canonical_op(a) == canonical_op(b):
            out.append(KEEP)
        elif b == SKIP_OP:
            out.append(SKIP)
        elif canonical_op(b) == NULL_OP:
            out.append(NULL)
        else:
            return None
    return out


def is_reachable(src: Cell, dst: Cell, reduction: bool, cost_of: CostFn | None = None,
                 rules: Rules = "paper", prune_dead: bool = True) -> bool:
    """Whether `dst` is one allowed transformation of `src` under the rules (and the cost mask)."""
    acts = actions_between(src, dst)
    if acts is None:
        return False
    mask = transition_mask(src, reduction, cost_of, rules, prune_dead)
    return bool(mask[torch.arange(src.num_edges), torch.tensor(acts)].all())
