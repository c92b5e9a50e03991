"""Channel-wise interpolation, two-width sampling and the searchable conv against plain references."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tas_nas.ops import (
    SearchConvBN,
    channelwise_interpolate,
    cwi_apply,
    cwi_index,
    cwi_matrix,
    cwi_rows,
    gumbel_like,
    gumbel_softmax,
    select_k,
    tau_at,
)


def test_cwi_keeps_a_full_width_map_unchanged() -> None:
    x = torch.randn(2, 16, 5, 5)
    assert torch.equal(channelwise_interpolate(x, 16), x)
    lo, hi = cwi_index(16, 16)
    assert torch.equal(lo, torch.arange(16)) and torch.equal(hi, torch.arange(16))
    assert torch.equal(cwi_matrix(16, 16), torch.eye(16))


@pytest.mark.parametrize("c,C", [(4, 16), (9, 16), (11, 16), (19, 64), (57, 64), (1, 3), (3, 4)])
def test_cwi_shape_and_adaptive_pooling(c: int, C: int) -> None:
    x = torch.randn(3, c, 4, 4)
    out = channelwise_interpolate(x, C)
    assert out.shape == (3, C, 4, 4)
    lo, hi = cwi_index(c, C)
    torch.testing.assert_close((x[:, lo] + x[:, hi]) / 2, out)
    padded = torch.cat([x, torch.randn(3, C - c, 4, 4)], 1)  # columns >= c must not matter
    torch.testing.assert_close(torch.einsum("ij,njhw->nihw", cwi_matrix(c, C), padded), out)
    # a constant map stays constant, and every input channel is used
    torch.testing.assert_close(channelwise_interpolate(torch.ones(1, c, 2, 2), C), torch.ones(1, C, 2, 2))
    assert set(torch.cat([lo, hi]).tolist()) == set(range(c))


def test_cwi_rejects_narrowing() -> None:
    with pytest.raises(ValueError, match="1 <= c <= C"):
        cwi_index(17, 16)


def test_cwi_rows_match_the_static_index_for_every_pair() -> None:
    for C in (4, 9, 16):
        for m in range(1, C + 1):
            for c in range(1, m + 1):
                lo, hi, valid = cwi_rows(torch.tensor(c), torch.tensor(m), C)
                slo, shi = cwi_index(c, m)
                assert torch.equal(lo[:m], slo) and torch.equal(hi[:m], shi)
                assert valid.tolist() == [i < m for i in range(C)]


@pytest.mark.parametrize("dense", [True, False])
def test_cwi_apply_is_adaptive_pooling_to_m_then_zero_padding(dense: bool) -> None:
    x = torch.randn(2, 16, 3, 3)
    for c, m in ((4, 9), (9, 9), (11, 16), (1, 5)):
        xc = torch.cat([x[:, :c], torch.zeros(2, 16 - c, 3, 3)], 1)
        out = cwi_apply(xc, torch.tensor(c), torch.tensor(m), torch.tensor(0.3), dense=dense)
        ref = 0.3 * torch.cat([channelwise_interpolate(x[:, :c], m), torch.zeros(2, 16 - m, 3, 3)], 1)
        torch.testing.assert_close(out, ref)


def test_mixing_weights_are_the_restricted_gumbel_softmax() -> None:
    """With fixed noise (G1, G2): l = (log_softmax(a) + G1) / tau, picks = top-k of l + G2, weights =
    softmax(l) restricted to the picks; checked against that formula written out, row by row."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 8, generator=g)
    mask = torch.ones(6, 8, dtype=torch.bool)
    mask[2, 5:] = False
    g1, g2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    for tau, k in ((5.0, 2), (0.3, 2), (1.0, 3)):
        idx, p = select_k(logits, mask, tau, k, noise=(g1, g2))
        for r in range(6):
            valid = [j for j in range(8) if mask[r, j]]
            a = logits[r, valid]
            ell = (a - torch.logsumexp(a, 0) + g1[r, valid]) / tau
            order = torch.argsort(ell + g2[r, valid], descending=True)[:k]
            assert idx[r].tolist() == [valid[j] for j in order]
            expected = torch.exp(ell[order]) / torch.exp(ell[order]).sum()
            torch.testing.assert_close(p[r], expected)


def test_select_k_draws_distinct_valid_widths_with_differentiable_weights() -> None:
    torch.manual_seed(0)
    logits = torch.randn(50, 8, requires_grad=True)
    mask = torch.ones(50, 8, dtype=torch.bool)
    mask[:, 6:] = False  # two padded candidates that must never be drawn
    for k in (2, 3):
        idx, p = select_k(logits, mask, tau=1.0, k=k)
        assert idx.shape == (50, k) and p.shape == (50, k)
        assert all(len(set(row)) == k for row in idx.tolist()) and (idx < 6).all()
        torch.testing.assert_close(p.sum(1), torch.ones(50))
        (g,) = torch.autograd.grad((p[:, 0] * 3.0).sum(), logits)
        assert g.abs().sum() > 0


def test_top_k_of_gumbel_perturbed_logits_is_sampling_without_replacement() -> None:
    """For a fixed l (G1 = 0), the ordered pair (i, j) is drawn with probability q_i q_j / (1 - q_i),
    q = softmax(l): what torch.multinomial(q, 2, replacement=False) draws, without its host syncs."""
    torch.manual_seed(0)
    n = 40000
    base = torch.tensor([1.5, 0.5, 0.0, -1.0])
    logits = base.repeat(n, 1)
    mask = torch.ones_like(logits, dtype=torch.bool)
    tau = 0.8
    idx, _ = select_k(logits, mask, tau, 2, noise=(torch.zeros_like(logits), gumbel_like(logits)))
    q = torch.softmax(torch.log_softmax(base, 0) / tau, 0)
    counts = torch.zeros(4, 4)
    counts.index_put_((idx[:, 0], idx[:, 1]), torch.ones(n), accumulate=True)
    for i in range(4):
        for j in range(4):
            expected = 0.0 if i == j else float(q[i] * q[j] / (1 - q[i]))
            se = (expected * (1 - expected) / n) ** 0.5
            assert abs(float(counts[i, j]) / n - expected) <= 4 * se + 1e-9, (i, j)


def test_select_k_with_fewer_valid_candidates_than_k() -> None:
    logits = torch.zeros(3, 4)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[:, 0] = True
    idx, p = select_k(logits, mask, tau=0.5, k=3)
    assert (idx == 0).all()  # the missing picks repeat the valid one...
    torch.testing.assert_close(p, torch.tensor([[1.0, 0.0, 0.0]] * 3))  # ...with weight 0


def test_depth_gumbel_softmax_is_the_formula() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 5, generator=g)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] * 5])
    noise = torch.randn(3, 5, generator=g)
    w = gumbel_softmax(logits, mask, tau=0.4, noise=noise)
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    assert (w[1, 3:] == 0).all()
    a = logits[1, :3]
    torch.testing.assert_close(w[1, :3], torch.softmax((torch.log_softmax(a, 0) + noise[1, :3]) / 0.4, 0))


def test_tau_schedules() -> None:
    """The paper: linear 10 -> 0.1; the official script: cosine 5 -> 0.1 (both over epoch / epochs)."""
    assert tau_at(0, 10, 10.0, 0.1) == pytest.approx(10.0)
    assert tau_at(5, 10, 10.0, 0.1) == pytest.approx(5.05)  # linear: halfway at half time
    assert tau_at(10, 10, 10.0, 0.1) == pytest.approx(0.1)
    assert tau_at(3, 12, 5.0, 0.1, "cosine") == pytest.approx(0.1 + 4.9 * (1 + math.cos(math.pi / 4)) / 2)
    assert tau_at(6, 12, 5.0, 0.1, "cosine") == pytest.approx(2.55)
    for schedule in ("linear", "cosine"):
        taus = [tau_at(e, 10, 5.0, 0.1, schedule) for e in range(11)]
        assert all(a > b for a, b in zip(taus, taus[1:], strict=False))


def _reference(conv: SearchConvBN, x: torch.Tensor, idx: torch.Tensor, p: torch.Tensor, train: bool) -> torch.Tensor:
    """TAS's definition, candidate by candidate: slice, own BN, interpolate to the widest sampled width,
    mix, zero-pad to the full width."""
    y = conv.conv(x)
    widths = [conv.choices[int(j)] for j in idx]
    widest = max(widths)
    out = 0
    for k, (j, c) in enumerate(zip(idx.tolist(), widths, strict=True)):
        part = F.batch_norm(y[:, :c], conv.running_mean[j, :c].clone(), conv.running_var[j, :c].clone(),
                            conv.weight[j, :c], conv.bias[j, :c], training=train, eps=conv.eps)
        out = out + p[k] * channelwise_interpolate(part, widest)
    return torch.cat([out, out.new_zeros(out.shape[0], conv.c_out - widest, *out.shape[2:])], 1)


@pytest.mark.parametrize("mix", ["dense", "gather"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("picks", [(1, 6), (6, 1), (3, 5, 0), (7, 2)])
def test_search_conv_equals_the_candidate_by_candidate_definition(mix: str, train: bool, picks: tuple) -> None:
    torch.manual_seed(0)
    conv = SearchConvBN(8, 16, 3, 2, [4, 6, 8, 9, 11, 12, 14, 16], mix=mix)
    with torch.no_grad():
        conv.weight.uniform_(0.5, 1.5)
        conv.bias.normal_()
        conv.running_mean.normal_()
        conv.running_var.uniform_(0.5, 2.0)
    conv.train(train)
    x = torch.randn(4, 8, 9, 9)
    x[:, 5:] = 0  # an input of active width 5, zero-padded
    idx = torch.tensor(picks)
    p = torch.softmax(torch.randn(len(picks)), 0)
    expected = _reference(conv, x, idx, p, train)
    before = conv.running_mean.clone()
    out = conv(x, idx, p)
    assert out.shape == (4, 16, 5, 5)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    changed = (conv.running_mean != before).any(1)
    assert changed.tolist() == [train and k in picks for k in range(8)]  # only the sampled candidates' stats


def test_search_conv_full_width_one_hot_is_conv_bn() -> None:
    torch.manual_seed(0)
    conv = SearchConvBN(3, 16, 3, 1, [4, 8, 12, 16])
    x = torch.randn(4, 3, 8, 8)
    out = conv(x, torch.tensor([3, 0]), torch.tensor([1.0, 0.0]))
    ref = F.batch_norm(conv.conv(x), None, None, conv.weight[3], conv.bias[3], training=True)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
