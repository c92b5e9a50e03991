"""Transition rules and cost masks: every sampled transform is reachable and never costs more than its input."""
from __future__ import annotations

import pytest
import torch

from nas_common.arch import Arch
from nas_common.costs import count_costs
from nas_common.spaces.darts_genotypes import GENOTYPES
from nat_nas.archs import PUBLISHED, SPECS, cell_spec
from nat_nas.cells import NULL_OP, Cell, CellPair, canonical_op, edge_kind, random_cell
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


#: every built-in input: nas_common's genotypes and this package's cells (not the published outputs)
BUILTIN_INPUTS = sorted(GENOTYPES) + [n for n in SPECS if n not in PUBLISHED]


def _inputs() -> list[tuple[str, CellPair]]:
    out = [(name, CellPair.from_spec(cell_spec(name))) for name in BUILTIN_INPUTS]
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


@pytest.mark.parametrize("name", BUILTIN_INPUTS)
def test_all_skip_and_all_null_extremes_are_not_costlier(name: str) -> None:
    """The cheapest and the 'most skip' reachable cells, built and counted."""
    pair = CellPair.from_spec(cell_spec(name))
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


def test_prior_mask_table_equals_the_masks_of_prior_samples() -> None:
    """The device-side lookup of the search step gives transition_mask's masks for the prior's cells."""
    from nat_nas.cells import sample_prior
    from nat_nas.search import _PriorMasks

    costs = _costs()
    vocab = [NULL_OP, *FULLY_CONCAT_OPS]
    lookup = _PriorMasks(vocab, costs, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        ops, inputs = sample_prior(2, 4, len(FULLY_CONCAT_OPS), g)
        got = lookup(ops + 1, inputs)
        cells = [Cell(tuple(FULLY_CONCAT_OPS[k] for k in row), tuple(src)) for row, src in
                 zip(ops.tolist(), inputs.tolist(), strict=True)]
        want = torch.stack([transition_mask(cells[0], False, costs[0]), transition_mask(cells[1], True, costs[1])])
        assert torch.equal(got, want)


def test_sample_prior_matches_random_cell_s_distribution() -> None:
    from nat_nas.cells import adjacency_from_inputs, sample_prior

    g = torch.Generator().manual_seed(0)
    ops, inputs = sample_prior(4000, 4, 8, g)
    node = torch.arange(8) // 2 + 2
    assert torch.all(inputs < node) and torch.all(inputs >= 0) and ops.max() == 7 and ops.min() == 0
    # node 5 (edges 6, 7) reads each of its 5 predecessors with probability 1/5
    freq = torch.bincount(inputs[:, 6:].flatten(), minlength=5).float() / inputs[:, 6:].numel()
    torch.testing.assert_close(freq, torch.full((5,), 0.2), atol=0.02, rtol=0)
    cell = Cell(tuple(FULLY_CONCAT_OPS[k] for k in ops[0].tolist()), tuple(inputs[0].tolist()))
    torch.testing.assert_close(adjacency_from_inputs(inputs[:1])[0], cell.adjacency())


def test_published_rules_allow_free_null_to_skip_only() -> None:
    """N -> S where the built network gets no costlier: stride 1, reading a computed state, into a
    computed node. Not at stride 2 (a FactorizedReduce), not reviving a dead node or an unread input."""
    normal_costs, reduce_costs = _costs()
    # node 2: conv(0) + null(1); node 3: conv(2) + skip(1); node 4: null(0) + null(1); node 5: conv(3) + null(4)
    cell = Cell(("conv_3x3", NULL_OP, "conv_3x3", "skip_connect", NULL_OP, NULL_OP, "conv_3x3", NULL_OP),
                (0, 1, 2, 1, 0, 1, 3, 4))
    paper = transition_mask(cell, False, normal_costs, "paper")
    pub = transition_mask(cell, False, normal_costs, "published")
    assert not paper[:, SKIP][[1, 4, 5, 7]].any()
    assert pub[1, SKIP]  # null from input 1 (read by node 3's skip) into node 2 (computed)
    assert not pub[4, SKIP] and not pub[5, SKIP]  # node 4 is dead: a skip would revive it
    assert not pub[7, SKIP]  # reads dead node 4
    assert torch.equal(pub[:, [KEEP, NULL]], paper[:, [KEEP, NULL]])
    red = transition_mask(cell, True, reduce_costs, "published")
    assert not red[1, SKIP]  # stride 2: a FactorizedReduce costs more than nothing
    # the hand-crafted blocks read only c_{k-1}: each null edge there leaves c_{k-2}, so none may become a skip
    for name in ("vgg-block", "resnet-block", "mobilenetv2-block"):
        pair = CellPair.from_spec(cell_spec(name))
        assert torch.equal(transition_mask(pair.normal, False, normal_costs, "published"),
                           transition_mask(pair.normal, False, normal_costs, "paper"))


def _hand_made() -> list[tuple[str, CellPair]]:
    g = torch.Generator().manual_seed(1)
    ops = [*FULLY_CONCAT_OPS, NULL_OP, NULL_OP, NULL_OP]  # many null edges: room for null -> skip
    out = [(f"nully{k}", CellPair(random_cell(g, ops), random_cell(g, ops))) for k in range(6)]
    return out + [(n, CellPair.from_spec(cell_spec(n))) for n in ("mobilenetv2-block", "random-r2", "random-r4")]


@pytest.mark.parametrize("name,pair", _hand_made(), ids=[n for n, _ in _hand_made()])
def test_published_rules_never_cost_more_on_the_built_network(name: str, pair: CellPair) -> None:
    """Every null -> skip the published rules allow at once, plus every other allowed skip: counted."""
    costs = _costs()
    base = _counted(pair)
    for action in (SKIP, NULL):
        cells = []
        for cell, red, cost in ((pair.normal, False, costs[0]), (pair.reduce, True, costs[1])):
            mask = transition_mask(cell, red, cost, "published")
            cells.append(apply_actions(cell, torch.where(mask[:, action], action, KEEP)))
        got = _counted(CellPair(*cells))
        assert got["macs"] <= base["macs"] and got["params"] <= base["params"], (name, action, got, base)


def test_published_outputs_of_the_hand_crafted_blocks_cost_more_here() -> None:
    """The official NAT_VGG / NAT_ResBlock add skips from c_{k-2}, which their inputs never read, and
    stride-2 skips: on nas_common's network (no preprocessing of an unread input) they cost more, so
    neither rule set reaches them; NAT_DARTS's reduction cell turns stride-2 pools into FactorizedReduces."""
    costs = _costs()
    for out in ("nat-vgg-block", "nat-resnet-block", "nat-darts-v2"):
        src, dst = CellPair.from_spec(cell_spec(PUBLISHED[out])), CellPair.from_spec(cell_spec(out))
        for rules in ("paper", "published"):
            assert not is_reachable(src.reduce, dst.reduce, True, costs[1], rules)
    for out in ("nat-vgg-block", "nat-resnet-block"):
        assert _counted(CellPair.from_spec(cell_spec(out)))["params"] > \
            _counted(CellPair.from_spec(cell_spec(PUBLISHED[out])))["params"]


def _counted_darts_layout(pair: CellPair) -> dict[str, float]:
    net = {**NET, "prune_dead": False}
    return count_costs(Arch("darts", pair.to_spec(), net).build(), tuple(net["input"]))


@pytest.mark.parametrize("name,pair", _hand_made(), ids=[n for n, _ in _hand_made()])
def test_published_rules_in_darts_layout_never_cost_more(name: str, pair: CellPair) -> None:
    """`prune_dead=False` (DARTS' layout: both inputs preprocessed, every node computed): every stride-1
    null -> skip is free, so the published rules allow them all; applied at once, with every other allowed
    skip, the network counted in that layout costs no more."""
    costs = _costs()
    base = _counted_darts_layout(pair)
    for cell, red, cost in ((pair.normal, False, costs[0]), (pair.reduce, True, costs[1])):
        mask = transition_mask(cell, red, cost, "published", prune_dead=False)
        free = [e for e, op in enumerate(cell.ops) if canonical_op(op) == NULL_OP and not (red and cell.inputs[e] < 2)]
        assert all(mask[e, SKIP] for e in free), (name, red)
        assert mask.sum() >= transition_mask(cell, red, cost, "published").sum()  # more freedom than pruned
    for action in (SKIP, NULL):
        cells = [apply_actions(cell, torch.where(transition_mask(cell, red, cost, "published", prune_dead=False)
                                                 [:, action], action, KEEP))
                 for cell, red, cost in ((pair.normal, False, costs[0]), (pair.reduce, True, costs[1]))]
        got = _counted_darts_layout(CellPair(*cells))
        assert got["macs"] <= base["macs"] and got["params"] <= base["params"], (name, action, got, base)


def test_darts_layout_reaches_the_published_vgg_and_resnet_normal_cells() -> None:
    """The official NAT_VGG / NAT_ResBlock normal cells add stride-1 skips from c_{k-2}: free in DARTS'
    layout (published rules, prune_dead=False), not in nas_common's, where c_{k-2} is then preprocessed."""
    costs = _costs()
    for out in ("nat-vgg-block", "nat-resnet-block"):
        src, dst = CellPair.from_spec(cell_spec(PUBLISHED[out])), CellPair.from_spec(cell_spec(out))
        assert is_reachable(src.normal, dst.normal, False, costs[0], "published", prune_dead=False), out
        assert not is_reachable(src.normal, dst.normal, False, costs[0], "published"), out
