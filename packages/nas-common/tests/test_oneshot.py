"""The shared one-shot evaluation: BN re-estimation, batch-statistics scoring, candidate scoring and the
device-side accumulator, each checked against an independent computation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas_common.oneshot import Accumulator, batch_statistics, recalibrate_bn, score_candidates


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))


def batches(n: int = 3, b: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(b, 3, 6, 6, generator=g) * (i + 1), torch.randint(0, 3, (b,), generator=g))
            for i in range(n)]


def test_recalibrated_statistics_are_the_average_of_the_batch_statistics() -> None:
    m, data = net(), batches()
    with torch.no_grad():
        m[1].running_mean.fill_(123.0)  # stale statistics must not survive
        feats = [m[0](x) for x, _ in data]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    momentum = m[1].momentum
    recalibrate_bn(m, data)
    torch.testing.assert_close(m[1].running_mean, mean)
    torch.testing.assert_close(m[1].running_var, var)
    assert not m.training and m[1].momentum == momentum


def test_batch_statistics_normalise_per_batch_and_keep_the_running_ones() -> None:
    m, (x, _) = net(), batches(1)[0]
    before = (m[1].running_mean.clone(), m[1].running_var.clone())
    m.train()
    with torch.no_grad():
        expected = m(x)  # train-mode BN: the batch's statistics
    m[1].running_mean.copy_(before[0])
    m[1].running_var.copy_(before[1])
    with batch_statistics(m), torch.no_grad():
        got = m(x)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(m[1].running_mean, before[0])
    torch.testing.assert_close(m[1].running_var, before[1])
    assert m.training  # the mode it was in


@pytest.mark.parametrize("group", [1, 2])
def test_scores_equal_a_plain_evaluation_of_each_candidate(group: int) -> None:
    m, data = net(), batches()
    scales = [0.5, 1.0, 2.0]  # a "candidate" scales the logits

    def forward(cands, x):
        out = m(x)
        return torch.cat([out * c for c in cands])

    got = score_candidates(scales, forward, data, model=m, group=group)
    m.eval()
    with torch.no_grad():
        for s, (top1, loss) in zip(scales, got, strict=True):
            logits = torch.cat([m(x) * s for x, _ in data])
            y = torch.cat([y for _, y in data])
            assert top1 == pytest.approx((logits.argmax(1) == y).double().mean().item())
            assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)


def test_recalibrate_mode_reestimates_per_candidate() -> None:
    m, data = net(), batches()
    calib = batches(2, 16)
    got = score_candidates([1.0], lambda c, x: m(x), data, model=m, calibration=calib, bn="recalibrate")
    ref = net()
    recalibrate_bn(ref, calib)
    with torch.no_grad():
        logits = torch.cat([ref(x) for x, _ in data])
    y = torch.cat([y for _, y in data])
    assert got[0][0] == pytest.approx((logits.argmax(1) == y).double().mean().item())
    with pytest.raises(ValueError, match="group=1"):
        score_candidates([1.0, 2.0], lambda c, x: m(x), data, model=m, calibration=calib, bn="recalibrate", group=2)


def test_accumulator_means() -> None:
    acc = Accumulator()
    logits, y = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]), torch.tensor([0, 1, 1])
    acc.add_batch(logits[:2], y[:2])
    acc.add_batch(logits[2:], y[2:])
    acc.add(penalty=torch.tensor(6.0))
    out = acc.compute()
    assert out["n"] == 3 and out["top1"] == pytest.approx(2 / 3)
    assert out["loss"] == pytest.approx(F.cross_entropy(logits, y).item())
    assert out["penalty"] == pytest.approx(2.0)
