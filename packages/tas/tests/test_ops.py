"""Channel-wise interpolation, two-width sampling and the searchable conv against plain references."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tas_nas.ops import SearchConvBN, channelwise_interpolate, cwi_index, cwi_matrix, gumbel_softmax, select_two, tau_at


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


def test_select_two_draws_two_distinct_valid_widths_with_differentiable_weights() -> None:
    torch.manual_seed(0)
    logits = torch.randn(50, 8, requires_grad=True)
    mask = torch.ones(50, 8, dtype=torch.bool)
    mask[:, 6:] = False  # two padded candidates that must never be drawn
    idx, p = select_two(logits, mask, tau=1.0)
    assert idx.shape == (50, 2) and p.shape == (50, 2)
    assert (idx[:, 0] != idx[:, 1]).all() and (idx < 6).all()
    torch.testing.assert_close(p.sum(1), torch.ones(50))
    (p[:, 0] * 3.0).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_select_two_follows_the_distribution() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([[4.0, 0.0, 0.0, 0.0]]).repeat(2000, 1)
    idx, _ = select_two(logits, torch.ones_like(logits, dtype=torch.bool), tau=1.0)
    assert (idx == 0).any(1).float().mean() > 0.9  # the likely width is almost always one of the two


def test_select_two_single_candidate_row() -> None:
    logits = torch.zeros(3, 4)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[:, 0] = True
    idx, p = select_two(logits, mask, tau=0.5)
    picked_valid = torch.where(idx == 0, p, torch.zeros_like(p)).sum(1)
    torch.testing.assert_close(picked_valid, torch.ones(3))


def test_depth_gumbel_softmax_masks_and_normalises() -> None:
    logits = torch.zeros(3, 5)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] * 5])
    w = gumbel_softmax(logits, mask, tau=0.1)
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    assert (w[1, 3:] == 0).all()


def test_tau_anneals_from_max_to_min() -> None:
    assert tau_at(0, 10, 5.0, 0.1) == pytest.approx(5.0)
    assert tau_at(10, 10, 5.0, 0.1) == pytest.approx(0.1)
    taus = [tau_at(e, 10, 5.0, 0.1) for e in range(11)]
    assert all(a > b for a, b in zip(taus, taus[1:], strict=False))


def _reference(conv: SearchConvBN, x: torch.Tensor, idx: torch.Tensor, p: torch.Tensor, train: bool) -> torch.Tensor:
    """TAS's definition, candidate by candidate: slice, own BN, interpolate to full width, mix."""
    y = conv.conv(x)
    out = 0
    for k in range(2):
        j = int(idx[k])
        c = conv.choices[j]
        part = F.batch_norm(y[:, :c], conv.running_mean[j, :c].clone(), conv.running_var[j, :c].clone(),
                            conv.weight[j, :c], conv.bias[j, :c], training=train, eps=conv.eps)
        out = out + p[k] * channelwise_interpolate(part, conv.c_out)
    return out


@pytest.mark.parametrize("mix", ["dense", "gather"])
@pytest.mark.parametrize("train", [True, False])
def test_search_conv_equals_the_candidate_by_candidate_definition(mix: str, train: bool) -> None:
    torch.manual_seed(0)
    conv = SearchConvBN(8, 16, 3, 2, [4, 6, 8, 9, 11, 12, 14, 16], mix=mix)
    with torch.no_grad():
        conv.weight.uniform_(0.5, 1.5)
        conv.bias.normal_()
        conv.running_mean.normal_()
        conv.running_var.uniform_(0.5, 2.0)
    conv.train(train)
    x = torch.randn(4, 8, 9, 9)
    idx, p = torch.tensor([1, 6]), torch.tensor([0.3, 0.7])
    expected = _reference(conv, x, idx, p, train)
    before = conv.running_mean.clone()
    out = conv(x, idx, p)
    assert out.shape == (4, 16, 5, 5)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    changed = (conv.running_mean != before).any(1)
    assert changed.tolist() == [train and k in (1, 6) for k in range(8)]  # only the sampled candidates' stats


def test_search_conv_full_width_one_hot_is_conv_bn() -> None:
    torch.manual_seed(0)
    conv = SearchConvBN(3, 16, 3, 1, [4, 8, 12, 16])
    x = torch.randn(4, 3, 8, 8)
    out = conv(x, torch.tensor([3, 0]), torch.tensor([1.0, 0.0]))
    ref = F.batch_norm(conv.conv(x), None, None, conv.weight[3], conv.bias[3], training=True)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
