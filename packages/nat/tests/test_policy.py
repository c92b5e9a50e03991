"""The GCN policy: masks give zero probability, the GCN is permutation-equivariant, REINFORCE pieces."""
from __future__ import annotations

import pytest
import torch

from nas_common.spaces.darts import genotype_to_spec
from nas_common.spaces.darts_genotypes import GENOTYPES
from nat_nas.cells import NULL_OP, Cell, CellPair, random_cell
from nat_nas.policy import GCN, NATPolicy, build_policy, normalized_adjacency
from nat_nas.transitions import KEEP, NULL, SKIP, transition_mask

OPS = [NULL_OP, "skip_connect", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3", "sep_conv_5x5",
       "dil_conv_3x3", "dil_conv_5x5", "conv_3x3"]
REAL = OPS[1:]


def _hand(name: str) -> CellPair:
    return CellPair.from_spec(genotype_to_spec(GENOTYPES[name]))


def _policy(seed: int = 0) -> NATPolicy:
    torch.manual_seed(seed)
    return NATPolicy(OPS, embed=8, features=16, hidden=12)


def test_normalized_adjacency_is_symmetric_with_unit_spectrum() -> None:
    adj = _hand("resnet-block").normal.adjacency().unsqueeze(0)
    a = normalized_adjacency(adj)[0]
    torch.testing.assert_close(a, a.t())
    assert torch.all(torch.diagonal(a) > 0)  # self-loops
    assert torch.linalg.eigvalsh(a).abs().max() <= 1 + 1e-5


def test_gcn_is_permutation_equivariant() -> None:
    torch.manual_seed(0)
    gcn = GCN(5, 7)
    x = torch.randn(1, 6, 5)
    adj = (torch.rand(1, 6, 6) < 0.4).float()
    perm = torch.randperm(6)
    out = gcn(x, adj)
    out_p = gcn(x[:, perm], adj[:, perm][:, :, perm])
    torch.testing.assert_close(out_p, out[:, perm])


def _swap_nodes_2_3(cell: Cell) -> Cell:
    """The same cell with intermediate nodes 2 and 3 relabelled (valid when node 3 does not read node 2)."""
    relabel = {0: 0, 1: 1, 2: 3, 3: 2, 4: 4, 5: 5}
    ops, inputs = list(cell.ops), [relabel[i] for i in cell.inputs]
    ops[0:2], ops[2:4] = ops[2:4], ops[0:2]
    inputs[0:2], inputs[2:4] = inputs[2:4], inputs[0:2]
    return Cell(tuple(ops), tuple(inputs))


def test_policy_is_equivariant_to_node_relabelling() -> None:
    policy = _policy()
    cell = Cell(("sep_conv_3x3", "max_pool_3x3", "skip_connect", "dil_conv_5x5",
                 "conv_3x3", "sep_conv_5x5", "avg_pool_3x3", NULL_OP), (0, 1, 1, 0, 2, 3, 3, 4))
    other = _swap_nodes_2_3(cell)
    la = policy.logits(*policy.encode([cell]))[0]
    lb = policy.logits(*policy.encode([other]))[0]
    torch.testing.assert_close(lb[0:2], la[2:4])
    torch.testing.assert_close(lb[2:4], la[0:2])
    torch.testing.assert_close(lb[4:], la[4:])
    # and the logits do depend on the ops (the GCN sees each node's own edges through the self-loop)
    changed = cell.with_ops(("avg_pool_3x3",) + cell.ops[1:])
    assert not torch.allclose(policy.logits(*policy.encode([changed]))[0, :2], la[:2])


def test_masked_actions_have_zero_probability_and_are_never_sampled() -> None:
    policy = _policy()
    g = torch.Generator().manual_seed(0)
    cells = [random_cell(g, REAL) for _ in range(6)] + [*_hand("vgg-block").cells(), *_hand("resnet-block").cells()]
    masks = torch.stack([transition_mask(c, reduction=i % 2 == 1) for i, c in enumerate(cells)])
    # also mask some more at random (as the cost mask would), keeping "keep" always allowed
    extra = torch.rand(masks.shape, generator=g) < 0.3
    extra[..., KEEP] = False
    masks &= ~extra
    probs = policy.distribution(cells, masks)
    assert torch.all(probs[~masks] == 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]))
    for _ in range(20):
        out = policy(cells, masks)
        assert torch.all(masks.gather(-1, out.actions.unsqueeze(-1)))
        assert torch.isfinite(out.log_prob).all() and torch.isfinite(out.entropy).all()


def test_null_edges_only_keep_and_entropy_counts_free_edges_only() -> None:
    policy = _policy()
    cell = Cell((NULL_OP,) * 8, (0, 1, 0, 1, 0, 1, 0, 1))
    mask = transition_mask(cell, reduction=False)
    assert mask[:, KEEP].all() and not mask[:, SKIP].any() and not mask[:, NULL].any()
    out = policy([cell], mask.unsqueeze(0))
    assert torch.all(out.actions == KEEP)
    assert out.log_prob.item() == 0.0 and out.entropy.item() == 0.0


def test_policy_gradient_moves_probability_toward_rewarded_action() -> None:
    policy = _policy()
    cell = Cell(("sep_conv_3x3",) * 8, (0, 1, 0, 1, 0, 1, 0, 1))
    mask = transition_mask(cell, reduction=False).unsqueeze(0)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    before = policy.distribution([cell], mask)[0, :, SKIP].mean().item()
    torch.manual_seed(1)
    for _ in range(30):
        out = policy([cell], mask)
        reward = (out.actions == SKIP).float().mean() - 1 / 3
        loss = -(out.log_prob * reward).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = policy.distribution([cell], mask)[0, :, SKIP].mean().item()
    assert after > before + 0.1


@pytest.mark.parametrize("kind", ["gcn", "lstm", "random"])
def test_every_policy_masks_and_samples_by_its_probabilities(kind: str) -> None:
    """Masked actions never come out; sampled frequencies match the (masked) softmax (Gumbel-max)."""
    torch.manual_seed(0)
    policy = build_policy(kind, OPS, embed=8, features=16, hidden=12, nodes=6)
    cell = Cell(("sep_conv_3x3", "skip_connect", NULL_OP, "max_pool_3x3", "conv_3x3", "dil_conv_3x3",
                 "skip_connect", "avg_pool_3x3"), (0, 1, 0, 2, 3, 1, 4, 0))
    mask = transition_mask(cell, reduction=False).unsqueeze(0)
    probs = policy.distribution([cell], mask)[0]
    assert torch.all(probs[~mask[0]] == 0)
    if kind == "random":  # uniform over each edge's allowed actions
        torch.testing.assert_close(probs, mask[0].float() / mask[0].sum(-1, keepdim=True))
    ops, inputs = policy.encode([cell] * 4000)
    g = torch.Generator().manual_seed(1)
    out = policy.act(ops, inputs, mask.expand(4000, -1, -1), generator=g)
    assert torch.all(mask[0].gather(-1, out.actions.t()).t() | ~mask[0].any(-1))
    freq = torch.nn.functional.one_hot(out.actions, 3).float().mean(0)
    torch.testing.assert_close(freq, probs.detach(), atol=0.03, rtol=0)
    greedy = policy.act(ops[:1], inputs[:1], mask, greedy=True)
    assert torch.equal(greedy.actions[0], probs.argmax(-1))
    assert policy.trainable == (kind != "random")


def test_lstm_policy_reads_the_ops_and_the_wiring() -> None:
    torch.manual_seed(0)
    policy = build_policy("lstm", OPS, embed=8, hidden=12, nodes=6)
    cell = Cell(("sep_conv_3x3",) * 8, (0, 1, 0, 1, 0, 1, 0, 1))
    base = policy.logits(*policy.encode([cell]))
    other_op = policy.logits(*policy.encode([cell.with_ops(("conv_3x3",) + cell.ops[1:])]))
    rewired = policy.logits(*policy.encode([Cell(cell.ops, (0, 1, 0, 1, 0, 1, 0, 4))]))
    assert not torch.allclose(base, other_op) and not torch.allclose(base, rewired)


def test_policy_gradient_entropy_is_finite_with_masked_actions() -> None:
    """0 * log 0 must not poison the gradient of the entropy bonus (masked logits are -inf)."""
    policy = _policy()
    cell = Cell(("skip_connect", NULL_OP) * 4, (0, 1, 0, 1, 0, 1, 0, 1))
    mask = transition_mask(cell, reduction=False).unsqueeze(0)
    out = policy([cell], mask)
    (out.log_prob.sum() + out.entropy.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)
