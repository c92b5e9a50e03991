"""Expected MACs from the distributions against counted MACs, and the FLOP loss."""
from __future__ import annotations

import pytest
import torch

from nas_common import Arch, count_macs
from tas_nas.flops import FlopTable, flop_loss
from tas_nas.model import SearchResNet, base_spec, tas_depth_choices

NETS = [("resnet20", (3, 32, 32)), ("resnet56", (3, 32, 32)), ("resnet18", (3, 64, 64)), ("resnet50", (3, 48, 48))]


@pytest.fixture(scope="module", params=NETS, ids=[n for n, _ in NETS])
def net(request: pytest.FixtureRequest) -> tuple[SearchResNet, FlopTable, tuple[int, int, int]]:
    name, shape = request.param
    model = SearchResNet(base_spec(name), 10, shape)
    return model, FlopTable(model), shape


def test_unpruned_macs_equal_the_counted_base_network(net) -> None:  # noqa: ANN001
    model, table, shape = net
    base = Arch("resnet", model.spec, {"num_classes": 10, "input": list(shape)})
    assert table.max_macs == count_macs(base.build(), shape)


def test_one_hot_expected_macs_equal_the_counted_derived_network(net) -> None:  # noqa: ANN001
    model, table, shape = net
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(4):
            model.width_logits.copy_(torch.randn(model.width_logits.shape, generator=g))
            model.depth_logits.copy_(torch.randn(model.depth_logits.shape, generator=g))
            arch = Arch("resnet", model.derive_spec(), {"num_classes": 10, "input": list(shape)})
            assert float(table(*model.argmax_probs())) == count_macs(arch.build(), shape)


def test_expected_macs_is_the_mean_over_sampled_networks() -> None:
    torch.manual_seed(0)
    model = SearchResNet(base_spec("resnet20"), 10, (3, 32, 32), init_std=1.0)
    table = FlopTable(model)
    wp, dp = model.width_probs().detach(), model.depth_probs().detach()
    n = 20000
    w = torch.multinomial(wp, n, replacement=True).T  # (n, convs)
    d = torch.multinomial(dp, n, replacement=True).T
    oh_w = torch.nn.functional.one_hot(w, wp.shape[1]).double()
    oh_d = torch.nn.functional.one_hot(d, dp.shape[1]).double()
    samples = torch.stack([table(oh_w[i], oh_d[i]) for i in range(0, n, 10)])
    mean, se = samples.mean(), samples.std() / len(samples) ** 0.5
    assert abs(float(table(wp, dp)) - float(mean)) < 4 * float(se)


def test_expected_macs_are_differentiable_and_shrink_with_narrower_widths() -> None:
    model = SearchResNet(base_spec("resnet20"), 10, (3, 32, 32))
    table = FlopTable(model)
    e = table(model.width_probs(), model.depth_probs())
    g_w, g_d = torch.autograd.grad(e, model.arch_parameters())
    # raising a conv's smallest-width logit lowers E[MACs]; raising its largest raises it
    assert (g_w[:, 0] < 0).all() and (g_w[:, -1] > 0).all()
    assert (g_d[:, 0] < 0).all() and (g_d[:, -1] > 0).all()


def test_depth_choices_follow_tas() -> None:
    assert tas_depth_choices([3, 3, 3]) == [[1, 2, 3]] * 3
    assert tas_depth_choices([9]) == [[1, 3, 5, 7, 9]]
    assert tas_depth_choices([18]) == [[1, 3, 5, 7, 9, 11, 13, 15, 17, 18]]
    assert tas_depth_choices([2, 2, 2, 2], "imagenet") == [[1, 2]] * 4


def test_flop_loss_is_zero_inside_the_band() -> None:
    e = torch.tensor(50.0, requires_grad=True)
    for current in (45.0, 47.0, 50.0):
        loss = flop_loss(e, torch.tensor(current), target=50.0, tolerance=5.0)
        assert float(loss.detach()) == 0.0
        (g,) = torch.autograd.grad(loss, e)
        assert float(g) == 0.0


def test_flop_loss_pushes_the_right_way_outside_the_band() -> None:
    model = SearchResNet(base_spec("resnet20"), 10, (3, 32, 32))
    table = FlopTable(model)
    target, tol = 0.5 * table.max_macs, 0.05 * table.max_macs
    for current, direction in ((0.9 * table.max_macs, -1), (0.3 * table.max_macs, +1)):
        with torch.no_grad():
            model.width_logits.zero_()
            model.depth_logits.zero_()
        opt = torch.optim.SGD(model.arch_parameters(), lr=1.0)
        before = float(table(model.width_probs(), model.depth_probs()).detach())
        loss = flop_loss(table(model.width_probs(), model.depth_probs()), torch.tensor(current), target, tol)
        assert float(loss) != 0.0
        opt.zero_grad()
        loss.backward()
        opt.step()
        after = float(table(model.width_probs(), model.depth_probs()).detach())
        assert (after - before) * direction > 0, (current, before, after)
