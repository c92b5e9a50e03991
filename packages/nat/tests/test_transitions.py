"""Transition rules and cost masks: every sampled transform is reachable and never costs more than its input."""
from __future__ import annotations

import pytest
import torch

from nas_common.arch import Arch
from nas_common.costs import count_costs
from nas_common.spaces.darts import genotype_to_spec
from nas_common.spaces.darts_genotypes import GENOTYPES
from nat_nas.cells import NULL_OP, Cell, CellPair, edge_kind, random_cell
from nat_nas.policy import NATPolicy
from nat_nas.search import FULLY_CONCAT_OPS, EdgeCosts
from nat_nas.transitions import KEEP, NULL, SKIP, apply_actions, is_reachable, transition_mask

NET = {"C": 8, "layers": 5, "auxiliary": False, "num_classes": 10, "input": [3, 32, 32]}


def _costs() -> tuple[EdgeCosts, EdgeCosts]:
    return EdgeCosts(NET["C"], NET["layers"], 32, False), EdgeCosts(NET["C"], NET["layers"], 32, True)


def _counted(pair: CellPair) -> dict[str, float]:
    arch = Arch("darts", pair.to_spec(), NET)
    return count_costs(arch.build(), tuple(NET["input"]))


def test_kinds_and_rules() -> None:
    assert [edge_kind(o) for o in ("sep_conv_3x3", "skip_connect", "none", "null", "max_pool_3x3")] == \
        ["O", "S", "N", "N", "O"]
    cell = Cell(("sep_conv_3x3", "skip_connect", NULL_OP, "max_pool_3x3"), (0, 1, 2, 1))
    mask = transition_mask(cell, reduction=False)
    assert mask.tolist() == [[True, True, True], [True, False, True], [True, False, False], [True, True, True]]


def test_cost_mask_forbids_pool_to_factorized_reduce_but_not_conv_to_skip() -> None:
    normal_costs, reduce_costs = _costs()
    cell = Cell(("max_pool_3x3", "sep_conv_3x3", "avg_pool_3x3", "dil_conv_3x3"), (0, 1, 2, 1))
    red = transition_mask(cell, reduction=True, cost_of=reduce_costs)
    assert not red[0, SKIP]  # pool at stride 2: a FactorizedReduce has params, the pool none
    assert red[1, SKIP]  # sep conv at stride 2 -> FactorizedReduce is cheaper
    assert red[2, SKIP]  # pool at stride 1 (from node 2) -> identity, free
    assert red[3, SKIP]
    norm = transition_mask(cell, reduction=False, cost_of=normal_costs)
    assert norm[:, SKIP].all()  # stride 1 everywhere: skip is the identity
    assert (red[:, NULL] & norm[:, NULL]).all()


def test_official_bug_null_to_skip_is_unreachable() -> None:
    src = Cell((NULL_OP, "sep_conv_3x3"), (0, 1))
    assert not is_reachable(src, src.with_ops(("skip_connect", "sep_conv_3x3")), reduction=False)
    assert not is_reachable(Cell(("skip_connect", "conv_3x3"), (0, 1)),
                            Cell(("sep_conv_3x3", "conv_3x3"), (0, 1)), reduction=False)  # S -> O
    assert not is_reachable(src, Cell((NULL_OP, "sep_conv_3x3"), (1, 1)), reduction=False)  # rewiring
    assert is_reachable(src, src.with_ops((NULL_OP, "skip_connect")), reduction=False)


def _inputs() -> list[tuple[str, CellPair]]:
    out = [(name, CellPair.from_spec(genotype_to_spec(g))) for name, g in sorted(GENOTYPES.items())]
    g = torch.Generator().manual_seed(0)
    ops = [*FULLY_CONCAT_OPS, NULL_OP]
    for k in range(4):
        out.append((f"random{k}", CellPair(random_cell(g, ops), random_cell(g, ops))))
    return out


@pytest.mark.parametrize("name,pair", _inputs(), ids=[n for n, _ in _inputs()])
def test_every_sampled_transform_is_reachable_and_not_costlier(name: str, pair: CellPair) -> None:
    torch.manual_seed(0)
    vocab = sorted({op for c in pair.cells() for op in c.ops} | set(FULLY_CONCAT_OPS) | {NULL_OP})
    policy = NATPolicy(vocab, embed=8, features=16, hidden=8)
    with torch.no_grad():  # uniform over the allowed actions: many different transforms come out
        policy.head.weight.zero_()
        policy.head.bias.zero_()
    costs = _costs()
    masks = torch.stack([transition_mask(pair.normal, False, costs[0]), transition_mask(pair.reduce, True, costs[1])])
    base = _counted(pair)
    seen = set()
    for _ in range(10):
        out = policy(list(pair.cells()), masks)
        assert torch.all(out.probs[~masks] == 0)
        new = CellPair(apply_actions(pair.normal, out.actions[0]), apply_actions(pair.reduce, out.actions[1]))
        assert is_reachable(pair.normal, new.normal, False, costs[0])
        assert is_reachable(pair.reduce, new.reduce, True, costs[1])
        if new in seen:
            continue
        seen.add(new)
        got = _counted(new)
        assert got["macs"] <= base["macs"] and got["params"] <= base["params"], (name, got, base)
    assert len(seen) > 1


@pytest.mark.parametrize("name", sorted(GENOTYPES))
def test_all_skip_and_all_null_extremes_are_not_costlier(name: str) -> None:
    """The cheapest and the 'most skip' reachable cells, built and counted."""
    pair = CellPair.from_spec(genotype_to_spec(GENOTYPES[name]))
    costs = _costs()
    base = _counted(pair)
    for action in (SKIP, NULL, KEEP):
        cells = []
        for cell, red, cost in ((pair.normal, False, costs[0]), (pair.reduce, True, costs[1])):
            mask = transition_mask(cell, red, cost)
            acts = torch.where(mask[:, action], action, KEEP)
            cells.append(apply_actions(cell, acts))
        got = _counted(CellPair(*cells))
        assert got["macs"] <= base["macs"] and got["params"] <= base["params"], (name, action, got, base)
