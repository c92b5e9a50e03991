"""The shared DARTS supernet: edge numbering, dense vs sparse agreement, sparse mode runs only what is listed."""
from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from torch import nn

from nas_common.ops import PRIMITIVES
from nas_common.spaces.darts import (
    DARTS_V2,
    GENOTYPES,
    DartsSupernet,
    Genotype,
    cell_choice_from_genotype,
    edge_index,
    genotype_from_weights,
    num_edges,
)

NAT_PRIMITIVES = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
                  "dil_conv_3x3", "dil_conv_5x5", "conv_3x3", "null")
ISTA_PRIMITIVES = tuple(p for p in PRIMITIVES if p != "none")




def make(primitives=PRIMITIVES, **kw) -> DartsSupernet:
    torch.manual_seed(0)
    args = dict(C=4, num_classes=5, layers=5, primitives=primitives) | kw
    return DartsSupernet(**args)


def x_batch(n=2, size=8):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def random_choice(rng: random.Random, net: DartsSupernet, per_node=2, weighted=True):
    """Per node, `per_node` (input, op) entries among the non-null ops (repeats of an edge allowed)."""
    live = [k for k, p in enumerate(net.primitives) if p not in ("none", "null")]
    return [[(rng.randrange(i + 2), rng.choice(live),
              torch.tensor(rng.uniform(-1, 1)) if weighted else None) for _ in range(per_node)]
            for i in range(net.steps)]


def test_edge_numbering():
    assert num_edges(4) == 14 and num_edges(5) == 20
    expected = [(i, j) for i in range(4) for j in range(i + 2)]
    assert [edge_index(i, j) for i, j in expected] == list(range(14))
    with pytest.raises(ValueError):
        edge_index(1, 3)
    net = make()
    assert net.n_edges == 14 and net.n_ops == 8
    cell = net.cells[0]
    assert len(cell.edges) == 14 and all(len(e) == 8 for e in cell.edges)


def test_layout_matches_darts_search_network():
    net = make(layers=8)
    assert [i for i, c in enumerate(net.cells) if c.reduction] == [2, 5]
    assert net.classifier.in_features == 4 * 16
    pool = net.cells[0].edges[0][PRIMITIVES.index("max_pool_3x3")]
    assert isinstance(pool, nn.Sequential) and isinstance(pool[1], nn.BatchNorm2d) and pool[1].weight is None
    bns = [m for m in net.cells.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(bn.weight is None for bn in bns)  # affine=False, as DARTS' search
    affine = make(affine=True, layers=3)
    sep = affine.cells[0].edges[0][PRIMITIVES.index("sep_conv_3x3")]
    assert all(m.weight is not None for m in sep.modules() if isinstance(m, nn.BatchNorm2d))
    assert affine.cells[0].edges[0][PRIMITIVES.index("max_pool_3x3")][1].weight is None  # pooling BN stays plain


def test_dense_forward_and_weight_checks():
    net = make()
    x = x_batch()
    w = torch.softmax(torch.randn(14, 8, requires_grad=True), -1)
    y = net(x, w, w)
    assert y.shape == (2, 5)
    y.sum().backward()
    with pytest.raises(ValueError, match=r"\(n_edges, n_ops\) = \(14, 8\)"):
        net(x, torch.zeros(14, 7), w)


@pytest.mark.parametrize("primitives", [PRIMITIVES, ISTA_PRIMITIVES, NAT_PRIMITIVES])
@pytest.mark.parametrize("seed", [0, 1])
def test_dense_one_hot_equals_sparse(primitives, seed):
    net = make(primitives).eval()
    rng = random.Random(seed)
    normal, reduce = random_choice(rng, net), random_choice(rng, net)
    x = x_batch()
    sparse = net.forward_sparse(x, normal, reduce)
    dense = net(x, net.choice_to_weights(normal), net.choice_to_weights(reduce))
    assert torch.allclose(sparse, dense, atol=1e-5)
    # train mode (batch statistics) agrees too
    net.train()
    assert torch.allclose(net.forward_sparse(x, normal, reduce),
                          net(x, net.choice_to_weights(normal), net.choice_to_weights(reduce)), atol=1e-5)


def test_single_ops_and_genotypes_agree_with_dense():
    net = make().eval()
    x = x_batch()
    normal, reduce = net.genotype_choice("darts-v2")
    w_n, w_r = net.choice_to_weights(normal), net.choice_to_weights(reduce)
    assert w_n.sum() == 8 and set(w_n.flatten().tolist()) == {0.0, 1.0}
    assert torch.allclose(net.forward_sparse(x, normal, reduce), net(x, w_n, w_r), atol=1e-5)


def test_sparse_weights_get_gradients():
    net = make(ISTA_PRIMITIVES)
    weights = [torch.tensor(0.7, requires_grad=True), torch.tensor(-0.2, requires_grad=True)]
    normal = [[(0, 3, weights[0]), (0, 4, weights[1])]] + [[(1, 2, None)] for _ in range(3)]
    reduce = [[(1, 0, None)] for _ in range(4)]
    net.forward_sparse(x_batch(), normal, reduce).sum().backward()
    assert all(w.grad is not None and w.grad != 0 for w in weights)


def _count_calls(net: DartsSupernet):
    calls: Counter = Counter()
    handles = []
    for c, cell in enumerate(net.cells):
        for e, edge in enumerate(cell.edges):
            for k, op in enumerate(edge):
                handles.append(op.register_forward_hook(
                    lambda m, i, o, key=(c, e, k): calls.update([key])))
        for p in ("preprocess0", "preprocess1"):
            handles.append(getattr(cell, p).register_forward_hook(
                lambda m, i, o, key=(c, p): calls.update([key])))
    return calls, handles


def test_sparse_mode_runs_exactly_the_listed_ops():
    net = make(NAT_PRIMITIVES)
    rng = random.Random(3)
    normal, reduce = random_choice(rng, net), random_choice(rng, net)
    normal[1].append(normal[1][0])  # the same (edge, op) twice: it runs twice
    calls, handles = _count_calls(net)
    net.forward_sparse(x_batch(), normal, reduce)
    expected: Counter = Counter()
    for c, cell in enumerate(net.cells):
        choice = reduce if cell.reduction else normal
        for i, node in enumerate(choice):
            for j, k, _ in node:
                expected[(c, edge_index(i, j), k)] += 1
        used = {j for node in choice for j, _, _ in node}
        for j in (0, 1):
            if j in used:
                expected[(c, f"preprocess{j}")] += 1
    assert calls == expected
    # dense mode runs every non-null op of every edge once
    calls.clear()
    w = torch.rand(net.n_edges, net.n_ops)
    net(x_batch(), w, w)
    n_live = sum(p != "null" for p in NAT_PRIMITIVES)
    assert sum(v for k, v in calls.items() if isinstance(k[1], int)) == len(net.cells) * 14 * n_live
    for h in handles:
        h.remove()


def test_null_entries_run_nothing():
    net = make(NAT_PRIMITIVES)
    null = NAT_PRIMITIVES.index("null")
    conv = NAT_PRIMITIVES.index("conv_3x3")
    # node 0: null from input 0 + conv from input 1; node 1: only nulls (dead); node 2 reads node 1 (dead)
    # and input 1; node 3: conv from node 0
    normal = [[(0, null, None), (1, conv, None)], [(0, null, None), (1, null, None)],
              [(3, conv, None), (1, conv, None)], [(2, conv, None), (2, null, None)]]
    reduce = [[(1, conv, None)] for _ in range(4)]
    calls, handles = _count_calls(net)
    y = net.forward_sparse(x_batch(), normal, reduce)
    assert torch.isfinite(y).all()
    c = 0  # the first cell is a normal cell
    assert not net.cells[c].reduction
    ran = {k for k in calls if k[0] == c}
    assert ran == {(c, edge_index(0, 1), conv), (c, edge_index(2, 1), conv), (c, edge_index(3, 2), conv),
                   (c, "preprocess1")}
    assert all(k[2] != null for k in calls if isinstance(k[1], int))
    for h in handles:
        h.remove()
    # the dead node is zero in the cell output
    cell = net.cells[0]
    plan = net.plan_choice(normal)
    s = torch.randn(2, 12, 8, 8)
    out = cell.forward_sparse(s, s, plan)
    assert out.shape == (2, 16, 8, 8) and not out[:, 4:8].any()


def test_concat_restricts_the_output_nodes():
    net = make(NAT_PRIMITIVES).eval()
    normal, reduce = net.genotype_choice(GENOTYPES["resnet-block"])
    calls, handles = _count_calls(net)
    y = net.forward_sparse(x_batch(), normal, reduce, normal_concat=[5], reduce_concat=[5])
    assert y.shape == (2, 5)
    assert not any(k[1] == "preprocess0" for k in calls)  # the resnet block never reads c_{k-2}
    for h in handles:
        h.remove()
    s = torch.randn(2, 12, 8, 8)
    out = net.cells[0].forward_sparse(s, s, net.plan_choice(normal, [5]))
    assert not out[:, :12].any() and out[:, 12:].any()
    with pytest.raises(ValueError, match="not an output node"):
        net.plan_choice(normal, [1])


def test_cell_choice_from_genotype():
    normal, reduce = cell_choice_from_genotype(DARTS_V2, PRIMITIVES)
    assert normal[0] == [(0, PRIMITIVES.index("sep_conv_3x3"), None), (1, PRIMITIVES.index("sep_conv_3x3"), None)]
    assert reduce[3] == [(2, PRIMITIVES.index("skip_connect"), None), (1, PRIMITIVES.index("max_pool_3x3"), None)]
    normal, _ = cell_choice_from_genotype(GENOTYPES["vgg-block"], NAT_PRIMITIVES)
    assert [len(node) for node in normal] == [1, 1, 1, 1]  # null edges dropped
    with pytest.raises(ValueError, match="conv_3x3"):
        cell_choice_from_genotype(GENOTYPES["vgg-block"], PRIMITIVES)
    with pytest.raises(ValueError, match="5 nodes"):
        make().genotype_choice("nasnet-a")


def test_bad_choices_are_rejected():
    net = make()
    good = [[(0, 1, None)] for _ in range(4)]
    with pytest.raises(ValueError, match="each of the 4 nodes"):
        net.forward_sparse(x_batch(), good[:3], good)
    with pytest.raises(ValueError, match=r"input 2 of node 0 must be < 2"):
        net.forward_sparse(x_batch(), [[(2, 1, None)]] + good[1:], good)
    with pytest.raises(ValueError, match="op index 8"):
        net.forward_sparse(x_batch(), [[(0, 8, None)]] + good[1:], good)


def test_op_wrapper_wraps_every_live_op():
    seen = []

    def wrap(op: nn.Module, name: str, C: int) -> nn.Module:
        seen.append((name, C))
        return nn.Sequential(op, nn.BatchNorm2d(C, affine=True))

    net = make(ISTA_PRIMITIVES, layers=3, op_wrapper=wrap)
    assert len(seen) == 3 * 14 * 7
    assert {c for _, c in seen} == {4, 8, 16}
    assert isinstance(net.cells[0].edges[0][0][-1], nn.BatchNorm2d)
    normal, reduce = net.genotype_choice(DARTS_V2)
    assert net.forward_sparse(x_batch(), normal, reduce).shape == (2, 5)


def test_auxiliary_and_drop_path_in_sparse_mode():
    net = make(ISTA_PRIMITIVES, auxiliary=True)
    normal, reduce = net.genotype_choice(DARTS_V2)
    x = x_batch(4)
    out = net.train().forward_sparse(x, normal, reduce)
    assert isinstance(out, tuple) and out[1].shape == (4, 5)
    w = torch.rand(14, 7)
    assert isinstance(net(x, w, w), tuple)
    net.eval()
    ref = net.forward_sparse(x, normal, reduce)
    net.drop_path_prob = 0.3
    assert torch.equal(net.forward_sparse(x, normal, reduce), ref)  # eval: no drop path
    net.train()
    torch.manual_seed(0)
    a = net.forward_sparse(x, normal, reduce)[0]
    net.drop_path_prob = 0.0
    torch.manual_seed(0)
    b = net.forward_sparse(x, normal, reduce)[0]
    assert not torch.allclose(a, b)


def test_choice_to_weights_accumulates_shared_edges():
    net = make()
    w = torch.tensor(0.25)
    choice = [[(0, 4, w), (0, 4, torch.tensor(0.5))], [(2, 1, None)], [], []]
    dense = net.choice_to_weights(choice)
    assert dense.shape == (14, 8)
    assert dense[edge_index(0, 0), 4] == 0.75 and dense[edge_index(1, 2), 1] == 1.0 and dense.sum() == 1.75


def test_sparse_matches_the_discrete_network_cell_structure():
    """Running a genotype through the supernet computes the same DAG as DartsNetwork (same op count)."""
    g = Genotype(normal=GENOTYPES["resnet-block"].normal, normal_concat=[2, 3, 4, 5],
                 reduce=GENOTYPES["resnet-block"].reduce, reduce_concat=[2, 3, 4, 5])
    net = make(NAT_PRIMITIVES)
    normal, reduce = net.genotype_choice(g)
    plan = net.plan_choice(normal)
    assert sum(len(node) for node in plan.run) == 5 and plan.needed_inputs == {1}


def test_derive_genotype_follows_darts_rule():
    """Weights that are one-hot on a genotype's ops give that genotype back (top-2 edges per node)."""
    net = make()
    normal, reduce = net.genotype_choice(DARTS_V2)
    w_n, w_r = net.choice_to_weights(normal), net.choice_to_weights(reduce)
    # a large `none` weight everywhere must not matter: DARTS ranks edges by their best non-none op
    w_n[:, PRIMITIVES.index("none")] = 5.0
    g = net.derive_genotype(w_n * 0.5 + 0.01, w_r)
    as_sets = lambda ops: [frozenset(ops[2 * i: 2 * i + 2]) for i in range(len(ops) // 2)]  # noqa: E731
    assert as_sets(g.normal) == as_sets(DARTS_V2.normal) and as_sets(g.reduce) == as_sets(DARTS_V2.reduce)
    assert g.normal_concat == [2, 3, 4, 5]
    # strongest edge first; the op is the argmax over non-null ops
    w = torch.zeros(14, 8)
    w[edge_index(0, 1), PRIMITIVES.index("dil_conv_5x5")] = 0.9
    w[edge_index(0, 0), PRIMITIVES.index("avg_pool_3x3")] = 0.4
    g = genotype_from_weights(w, w)
    assert g.normal[:2] == [("dil_conv_5x5", 1), ("avg_pool_3x3", 0)]
    with pytest.raises(ValueError, match="shape"):
        genotype_from_weights(torch.zeros(14, 7), w)
