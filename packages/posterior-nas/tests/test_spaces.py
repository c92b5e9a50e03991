"""The supernet spaces' hooks for the harness's equal-cost baselines (closed-form costs, scaling, the
reference network, size variants), nas_common's standard space tests over them, and the paper's
training schedules as `nas train` presets."""
from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from nas_common.config import resolve_config
from nas_common.costs import count_costs
from nas_common.testing import SpaceTests
from nas_common.train import TrainConfig, list_train_presets
from posterior_nas import RECIPES, get_supnet_space
from posterior_nas.recipes import L2

MICRO_NETS: dict[str, dict[str, Any]] = {
    "supnet-m": {"width": 4, "blocks": [1, 2, 1], "stem": 4, "num_classes": 10, "input": [3, 16, 16]},
    "supnet-mi": {"width": 8, "blocks": [1, 1, 1], "stem": 4, "stem_stride": 2, "num_classes": 10,
                  "input": [3, 16, 16]},
    "supnet-r": {"width": 8, "blocks": [1, 2, 1, 1], "num_classes": 10, "input": [3, 32, 32]},
}


@pytest.fixture(params=sorted(MICRO_NETS))
def space(request: pytest.FixtureRequest) -> str:
    return request.param


class TestSupNetSpaces(SpaceTests):
    """nas_common's standard space tests (build, closed-form costs against counted ones, arch.json)."""

    net_overrides = MICRO_NETS


def _net(name: str) -> dict[str, Any]:
    return get_supnet_space(name).validate_net(MICRO_NETS[name])


def _spec(name: str, seed: int) -> dict[str, Any]:
    return get_supnet_space(name).random_spec(random.Random(seed), _net(name))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closed_form_costs_are_the_counted_ones(space: str, seed: int) -> None:
    sp = get_supnet_space(space)
    net, spec = _net(space), _spec(space, seed)
    counted = count_costs(sp.build(spec, net), tuple(net["input"]))
    assert sp.costs(spec, net) == {"macs": counted["macs"], "params": counted["params"]}


def _kept_fraction(space: str, spec: dict[str, Any], net: dict[str, Any]) -> dict[str, float]:
    sp = get_supnet_space(space)
    plan = sp.plan(net)
    parts = plan.split(sp.mask_of(spec, net).reshape(1, -1))
    return {g: float(m.float().mean()) for g, m in parts.items()}


def test_scaled_keeps_each_groups_fraction_and_grows_the_cost(space: str) -> None:
    sp = get_supnet_space(space)
    net, spec = _net(space), _spec(space, 4)
    same_spec, same_net = sp.scaled(spec, net, 1.0)
    assert sp.costs(same_spec, same_net) == pytest.approx(sp.costs(spec, net), rel=0.02)
    wide_spec, wide_net = sp.scaled(spec, net, 2.0)
    assert wide_net["width"] == 2 * net["width"]
    if "stem" in net:
        assert wide_net["stem"] == 2 * net["stem"]
    before, after = _kept_fraction(space, spec, net), _kept_fraction(space, wide_spec, wide_net)
    sizes = dict(sp.plan(wide_net).groups)
    for g, f in before.items():  # the same fraction, to the nearest channel of the wider group
        assert after[g] == pytest.approx(f, abs=1.0 / sizes[g] + 1e-9), g
    ratio = sp.costs(wide_spec, wide_net)["macs"] / sp.costs(spec, net)["macs"]
    assert 2.5 < ratio < 4.2, ratio  # the searched convs grow with width squared, the stem and classifier linearly
    assert wide_spec == sp.validate_spec(wide_spec) and sp.build(wide_spec, wide_net) is not None


def test_scaled_supnet_r_keeps_a_width_the_four_branches_share() -> None:
    sp = get_supnet_space("supnet-r")
    _, net = sp.scaled({"keep": {}}, _net("supnet-r"), 1.3)
    assert net["width"] % 4 == 0


def test_reference_is_the_full_supernet_and_variants_change_the_stem() -> None:
    for name in MICRO_NETS:
        sp = get_supnet_space(name)
        label, spec, net = sp.reference(_net(name))
        assert name in label and spec == {"keep": {}} and net == _net(name)
        plan = sp.plan(net)
        _, params = plan.costs(torch.ones(1, plan.num_channels, dtype=torch.bool))
        assert sp.costs(spec, net)["params"] == float(params[0])
    variants = get_supnet_space("supnet-m").size_variants(_net("supnet-m"))
    assert variants and all(set(v) == {"stem"} and v["stem"] >= 1 for v in variants)
    assert get_supnet_space("supnet-r").size_variants(_net("supnet-r")) == []
    spec, net = get_supnet_space("supnet-m").scaled({"keep": {}}, _net("supnet-m"), 1.0, variants[0])
    assert net["stem"] == variants[0]["stem"] and spec == {"keep": {}}


# ---- the paper's schedules for `nas train` ---------------------------------------------------------

def test_the_papers_schedules_are_nas_train_presets() -> None:
    """`nas train ARCH --preset pgnas-cifar|pgnas-imagenet`: the search recipe's schedule, with the prior
    l2 (1 - p) / (2N) ||W||^2 on kept weights as the weight decay l2 / N (its gradient l2 / N * W)."""
    assert {"pgnas-cifar", "pgnas-imagenet"} <= set(list_train_presets())
    cifar = resolve_config(TrainConfig, "pgnas-cifar")
    c10 = RECIPES["cifar10"]
    assert (cifar.epochs, cifar.lr, cifar.batch_size, cifar.schedule, cifar.cutout, cifar.nesterov) == (
        c10["epochs"], c10["lr"], c10["batch_size"], "cosine", 16, False)
    assert cifar.weight_decay == pytest.approx(L2["cifar10"]["supnet-mi"] / c10["N"]) == pytest.approx(3e-4)
    inet = resolve_config(TrainConfig, "pgnas-imagenet")
    assert (inet.epochs, inet.lr, inet.batch_size, inet.schedule, inet.milestones, inet.gamma, inet.nesterov,
            inet.momentum) == (90, 0.1, 256, "step", (30, 60), 0.1, True, 0.9)
    assert inet.weight_decay == pytest.approx(80 / 1.2e6)
