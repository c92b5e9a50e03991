"""Behaviour of the hybrid representation, the supernets, the sampling and the config (issue 9, item 5)."""
from __future__ import annotations

import math
import random

import pytest
import torch

from nas_common.arch import Arch
from nas_common.config import resolve_config
from nas_common.costs import count_costs
from nas_common.errors import ArchFileError, ConfigError
from nas_common.methods import Budget
from nas_common.registry import SPACES
from posterior_nas import (
    GatedConv,
    PosteriorConfig,
    channel_rates,
    draw_masks,
    get_supnet_space,
    inherit_weights,
    regulariser,
    sample_masks,
    score_masks,
)
from posterior_nas.sampling import best_index, within_budget

MICRO_NETS = {
    "supnet-m": {"width": 4, "blocks": [1, 2, 1], "stem": 4, "num_classes": 10, "input": [3, 16, 16]},
    "supnet-mi": {"width": 8, "blocks": [1, 1, 1], "stem": 4, "num_classes": 10, "input": [3, 16, 16]},
    "supnet-r": {"width": 8, "blocks": [1, 2, 1, 1], "num_classes": 10, "input": [3, 32, 32]},
    "supnet-m/stem_stride=2": {"width": 4, "blocks": [1, 1, 1], "stem": 4, "stem_stride": 2, "num_classes": 10,
                               "input": [3, 16, 16]},
}


def _space_net(key: str):  # noqa: ANN202
    space = get_supnet_space(key.split("/")[0])
    return space, space.validate_net(MICRO_NETS[key])


def _randomise_bn(net: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


def _masks(K: int, seed: int = 0) -> torch.Tensor:
    """Masks from nearly full to nearly empty, so that whole convs and paths vanish in some."""
    g = torch.Generator().manual_seed(seed)
    rates = torch.tensor([0.0, 0.1, 0.5, 0.8, 0.95, 0.99, 1.0])[:, None]
    return torch.rand(len(rates), K, generator=g) >= rates


# ---- the hybrid representation ------------------------------------------------------------------------

def test_useless_branch_drop_rate_rises_useful_falls() -> None:
    """Toy data: branch A sees the label, branch B sees pure noise. Training the concrete-dropout
    objective must raise B's drop rate and lower A's (both start at 0.1)."""
    torch.manual_seed(0)
    C, classes = 8, 4
    a = GatedConv(C, classes, 1, gated=True, p_init=0.1)
    b = GatedConv(C, classes, 1, gated=True, p_init=0.1)
    opt = torch.optim.Adam([*a.parameters(), *b.parameters()], lr=0.05)
    proto = torch.randn(classes, C) * 2
    for _ in range(300):
        y = torch.randint(0, classes, (128,))
        xa = (proto[y] + torch.randn(128, C))[:, :, None, None]
        xb = torch.randn(128, C, 1, 1)
        logits = (a(xa) + b(xb)).flatten(1)
        loss = torch.nn.functional.cross_entropy(logits, y) + regulariser([a, b], l2=1.0, N=1000.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pa, pb = float(a.p.detach()), float(b.p.detach())
    assert pb > 0.2, pb
    assert pa < 0.05, pa


def test_concrete_mask_is_relaxed_bernoulli() -> None:
    """At a low temperature the relaxed keep-mask is near {0, 1} and keeps a channel with prob 1 - p;
    no 1/(1-p) rescale."""
    torch.manual_seed(0)
    g = GatedConv(4, 4, 1, gated=True, p_init=0.3, temperature=0.05)
    m = g.concrete_mask(20000, 4, torch.zeros(1)).detach()
    assert float(m.mean()) == pytest.approx(0.7, abs=0.02)
    assert float(((m > 0.05) & (m < 0.95)).float().mean()) < 0.1
    assert float(m.max()) <= 1.0


# ---- supernets, spaces, pruned networks -------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MICRO_NETS))
def test_pruned_network_equals_masked_supernet(name: str) -> None:
    space, net = _space_net(name)
    plan = space.plan(net)
    torch.manual_seed(0)
    sup = space.supernet(net)
    _randomise_bn(sup)
    sup.eval()
    masks = _masks(plan.num_channels)
    x = torch.randn(3, *net["input"])
    with torch.no_grad(), sup.masked(masks):
        folded = sup(x.repeat(len(masks), 1, 1, 1)).view(len(masks), 3, -1)
    full = sum(p.numel() for p in space.build({"keep": {}}, net).parameters())
    for i, m in enumerate(masks):
        spec = space.spec_of(m, net)
        pruned = space.build(spec, net)
        n_params = sum(p.numel() for p in pruned.parameters())
        if i >= 2:  # physically smaller, not masked
            assert n_params < full
        inherit_weights(pruned, sup, plan.keep_of(m)).eval()
        with torch.no_grad():
            torch.testing.assert_close(pruned(x), folded[i], rtol=1e-4, atol=1e-5)


def test_vanished_ops_are_removed() -> None:
    space = get_supnet_space("supnet-m")
    net = space.validate_net(MICRO_NETS["supnet-m"])
    plan = space.plan(net)
    m = plan.split(torch.ones(1, plan.num_channels, dtype=torch.bool))
    m["s0.b0.p1.conv2"][:] = False  # path p1 of the first block loses every channel of its second conv
    spec = space.spec_of(plan.join(m)[0], net)
    assert set(spec["keep"]) == {"s0.b0.p1.conv1", "s0.b0.p1.conv2"}  # the whole path vanished
    assert spec["keep"]["s0.b0.p1.conv1"] == "0" * 4
    model = space.build(spec, net)
    assert list(model.blocks[0].paths) == ["p0"]


@pytest.mark.parametrize("name", ["supnet-m", "supnet-r", "supnet-m/stem_stride=2"])
def test_closed_form_costs_match_counted(name: str) -> None:
    space, net = _space_net(name)
    plan = space.plan(net)
    masks = _masks(plan.num_channels, seed=3)
    macs, params = plan.costs(masks)
    for i, m in enumerate(masks):
        counted = count_costs(space.build(space.spec_of(m, net), net), tuple(net["input"]))
        assert macs[i].item() == counted["macs"]
        assert params[i].item() == counted["params"]


def test_spaces_registered_and_arch_roundtrip(tmp_path) -> None:
    for name in ("supnet-m", "supnet-mi", "supnet-r"):
        assert name in SPACES
    space = get_supnet_space("supnet-m")
    net = space.validate_net(MICRO_NETS["supnet-m"])
    spec = space.random_spec(random.Random(0), net)
    arch = Arch("supnet-m", spec, net).with_costs()
    from nas_common.arch import load_arch, save_arch

    again = load_arch(save_arch(arch, tmp_path / "a.json"))
    assert again == arch
    assert again.build()(torch.randn(2, 3, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize("spec, field", [
    ({"keep": {"s0.b0.p0.conv1": "10a1"}}, "s0.b0.p0.conv1"),
    ({"keep": {"s0.b0.p0.conv1": "101"}}, "3 bits"),
    ({"keep": {"nope": "0"}}, "nope"),
    ({"groups": {}}, "spec must be"),
])
def test_bad_specs_name_the_field(spec: dict, field: str) -> None:
    space = get_supnet_space("supnet-m")
    with pytest.raises(ArchFileError, match=field):
        space.build(spec, space.validate_net(MICRO_NETS["supnet-m"]))


def test_all_ones_groups_are_canonicalised_away() -> None:
    space = get_supnet_space("supnet-m")
    assert space.validate_spec({"keep": {"s0.b0.p0.conv1": "1111"}}) == {"keep": {}}


# ---- sampling -------------------------------------------------------------------------------------------

def _micro_supernet(name: str = "supnet-m"):
    space = get_supnet_space(name)
    net = space.validate_net(MICRO_NETS[name])
    torch.manual_seed(0)
    return space, net, space.supernet(net)


def test_sampling_frequencies_match_learned_rates() -> None:
    _, _, sup = _micro_supernet()
    g = torch.Generator().manual_seed(0)
    target = torch.rand(len(sup.gates), generator=g) * 0.8 + 0.05
    for gate, p in zip(sup.gates.values(), target, strict=False):
        gate.p_logit.data.fill_(math.log(p) - math.log(1 - p))
    masks = sample_masks(channel_rates(sup), 4000, g)
    drop = 1.0 - masks.float()
    freq = torch.stack([d.mean() for d in torch.split(drop, sup.plan.sizes, dim=1)])
    # each group: >= 16,000 Bernoulli draws, std <= 0.004
    torch.testing.assert_close(freq, target, atol=0.02, rtol=0)


def test_masks_over_budget_are_rejected_before_scoring() -> None:
    _, _, sup = _micro_supernet()
    plan = sup.plan
    rates = channel_rates(sup).detach()
    all_macs, _ = plan.costs(sample_masks(rates, 256, torch.Generator().manual_seed(1)))
    budget = Budget(macs=float(all_macs.median()))
    draw = draw_masks(plan, rates, 50, torch.Generator().manual_seed(2), budget)
    assert draw.masks.shape[0] == 50 and draw.drawn > 50
    macs, _ = plan.costs(draw.masks)
    assert bool((macs <= budget.macs).all())
    assert bool(within_budget(plan, draw.masks, budget).all())


def test_scoring_folds_masks_without_changing_scores() -> None:
    _, net, sup = _micro_supernet()
    _randomise_bn(sup)
    g = torch.Generator().manual_seed(0)
    masks = sample_masks(torch.full((sup.plan.num_channels,), 0.3), 5, g)
    x = torch.randn(12, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (12,), generator=g)
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    acc_folded, loss_folded = score_masks(sup, masks, batches, fold=6 * 5)
    acc_one, loss_one = score_masks(sup, masks, batches, fold=1)
    torch.testing.assert_close(acc_folded, acc_one)
    torch.testing.assert_close(loss_folded, loss_one, rtol=1e-4, atol=1e-5)
    # and each score is the pruned network's own accuracy
    space = get_supnet_space("supnet-m")
    for i in range(len(masks)):
        pruned = inherit_weights(space.build(space.spec_of(masks[i], net), net), sup, sup.plan.keep_of(masks[i]))
        with torch.no_grad():
            acc = (pruned.eval()(x).argmax(1) == y).float().mean()
        assert float(acc) == pytest.approx(float(acc_one[i]))


def _scoring_case(name: str, seed: int, n_masks: int, per_batch: int) -> tuple[torch.nn.Module, torch.Tensor, list]:
    """A micro supernet with random BatchNorm statistics, masks at drop rate 0.3 and two image batches."""
    _, _, sup = _micro_supernet(name)
    _randomise_bn(sup)
    g = torch.Generator().manual_seed(seed)
    masks = sample_masks(torch.full((sup.plan.num_channels,), 0.3), n_masks, g)
    size = sup.plan.input[1]
    x = torch.randn(2 * per_batch, 3, size, size, generator=g)
    y = torch.randint(0, 10, (2 * per_batch,), generator=g)
    return sup, masks, [(x[:per_batch], y[:per_batch]), (x[per_batch:], y[per_batch:])]


@pytest.mark.parametrize("name", ["supnet-m", "supnet-r"])
def test_scoring_runs_the_stem_once_per_image_with_the_same_scores(name: str) -> None:
    sup, masks, batches = _scoring_case(name, seed=0, n_masks=7, per_batch=5)
    seen: list[int] = []
    hook = sup.stem.register_forward_hook(lambda m, i, o: seen.append(int(i[0].shape[0])))
    try:
        cached = score_masks(sup, masks, batches, fold=5)
        assert sum(seen) == 10  # each image once, not once per mask
        seen.clear()
        plain = score_masks(sup, masks, batches, fold=5, stem_cache_bytes=0)
        assert sum(seen) == 10 * len(masks)
    finally:
        hook.remove()
    torch.testing.assert_close(cached, plain, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["supnet-m", "supnet-r"])
def test_scoring_in_channels_last_gives_the_same_scores_and_leaves_the_weights_layout(name: str) -> None:
    sup, masks, batches = _scoring_case(name, seed=1, n_masks=6, per_batch=6)
    seen: list[bool] = []
    hook = sup.blocks[0].register_forward_pre_hook(
        lambda m, i: seen.append(i[0].is_contiguous(memory_format=torch.channels_last)))
    try:
        nhwc = score_masks(sup, masks, batches, fold=6)
        assert seen and all(seen)  # the blocks really ran in NHWC
        seen.clear()
        nchw = score_masks(sup, masks, batches, fold=6, channels_last=False)
        assert seen and not any(seen)
    finally:
        hook.remove()
    torch.testing.assert_close(nhwc[0], nchw[0], rtol=0, atol=0)
    torch.testing.assert_close(nhwc[1], nchw[1], rtol=1e-5, atol=1e-6)
    # the caller's model is left in its own layout
    assert all(p.is_contiguous() for p in sup.parameters())


def test_best_index_prefers_accuracy_then_loss() -> None:
    acc = torch.tensor([0.5, 0.7, 0.7, 0.1])
    loss = torch.tensor([0.1, 0.9, 0.8, 0.0])
    assert best_index(acc, loss) == 2


# ---- config ---------------------------------------------------------------------------------------------

def test_paper_preset_has_the_papers_values() -> None:
    from types import SimpleNamespace

    cifar10 = SimpleNamespace(input_shape=(3, 32, 32), num_classes=10)
    cfg = resolve_config(PosteriorConfig, "paper").resolve(cifar10)
    assert (cfg.temperature, cfg.p_init, cfg.num_samples, cfg.batch_size, cfg.cutout) == (0.2, 0.1, 1500, 128, 16)
    assert (cfg.lr, cfg.lr_schedule, cfg.epochs, cfg.N, cfg.l2, cfg.regulariser) == (0.01, "cosine", 1800, 5e5,
                                                                                      150.0, "paper")
    assert (cfg.space, cfg.width, cfg.drop_rates, cfg.finetune_epochs) == ("supnet-mi", None, "learned", 0)
    assert get_supnet_space(cfg.space).default_net["width"] == 160
    assert cfg.replace(space="supnet-m", l2=None).resolve(cifar10).l2 == 50.0
    tiny = resolve_config(PosteriorConfig, "tiny")
    assert tiny.space == "supnet-m" and tiny.blocks == (1, 1, 1)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="p_init"):
        resolve_config(PosteriorConfig, "paper", overrides=["p_init=1.5"])
    with pytest.raises(ConfigError, match="regulariser"):
        resolve_config(PosteriorConfig, "paper", overrides=["regulariser=full"])


def test_infeasible_budget_fails_before_training() -> None:
    from types import SimpleNamespace

    from nas_common.errors import BudgetError
    from posterior_nas.search import _check_budget_feasible

    space, net = _space_net("supnet-m")
    floor, _ = space.plan(net).costs(torch.zeros(1, space.plan(net).num_channels, dtype=torch.bool))
    _check_budget_feasible(space, net, SimpleNamespace(budget=Budget(macs=float(floor[0]))))
    with pytest.raises(BudgetError, match="every searched channel dropped"):
        _check_budget_feasible(space, net, SimpleNamespace(budget=Budget(macs=float(floor[0]) - 1)))


def test_sample_and_score_hook(tmp_path) -> None:
    """The harness's ranking hook returns distinct networks with their inherited-weight accuracy."""
    from nas_common import Task, get_dataset
    from nas_common.search import run_search
    from posterior_nas import PosteriorSearch

    micro = {"width": 4, "blocks": [1, 1, 1], "stem": 4, "epochs": 1, "batch_size": 16, "val_fraction": 0.25,
             "num_samples": 4, "uniform_baseline": False}
    task = Task(get_dataset("cifar10-mini").subset(64, 32))
    run_search("posterior-nas", task, out=tmp_path / "run", preset="tiny", overrides=micro, progress=False)
    pairs = PosteriorSearch().sample_and_score(tmp_path / "run", task, 3, seed=0)
    assert 1 <= len(pairs) <= 3
    assert len({a.digest for a, _ in pairs}) == len(pairs)
    for arch, acc in pairs:
        assert 0.0 <= acc <= 1.0
        assert arch.build()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
