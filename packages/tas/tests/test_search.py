"""The search end to end at micro scale: conformance, the FLOP target, derive, configs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas_common import Budget, Task, get_dataset, resolve_config
from nas_common.costs.tables import shapes_macs
from nas_common.search import run_search
from nas_common.spaces.resnet import resnet_conv_shapes
from nas_common.testing import SearchMethodTests
from tas_nas import TASConfig, TASSearch

RESNET20_MACS = 40_813_184  # counted MACs of the unpruned ResNet-20 (option-B shortcuts)
MICRO = {"base": "resnet20", "epochs": 2, "batch_size": 16, "max_steps_per_epoch": 2, "arch_lr": 0.02}


class TestTASConformance(SearchMethodTests):
    method = "tas"
    micro = MICRO
    budget = Budget(macs=0.5 * RESNET20_MACS)
    budget_slack = 0.05 / 0.5  # the FLOP tolerance (5% of the base MACs) relative to the target


def _task(n: int = 64, budget: Budget | None = None, seed: int = 0) -> Task:
    return Task(get_dataset("cifar10-mini").subset(n, 16), seed=seed, budget=budget or Budget())


def test_presets_and_entry_point() -> None:
    paper = resolve_config(TASConfig, preset="paper")
    assert (paper.base, paper.epochs, paper.batch_size, paper.lr, paper.nesterov) == ("resnet56", 600, 256, 0.1, True)
    assert (paper.prune_ratio, paper.mode, paper.sampled_widths, paper.warmup_epochs) == (0.47, "both", 2, 0)
    assert (paper.arch_lr, paper.arch_betas, paper.arch_weight_decay) == (1e-3, (0.5, 0.999), 1e-3)
    # the paper's text: tau linearly decayed from 10 to 0.1; the official script: cosine 5 -> 0.1
    assert (paper.tau_schedule, paper.tau_max, paper.tau_min) == ("linear", 10.0, 0.1)
    official = resolve_config(TASConfig, preset="official")
    assert (official.tau_schedule, official.tau_max, official.tau_min) == ("cosine", 5.0, 0.1)
    assert (paper.flop_weight, paper.flop_tolerance) == (2.0, 0.05)
    assert len(paper.width_ratios) == 8 and (paper.kd_alpha, paper.kd_temperature) == (0.9, 4.0)
    ratios = {name: (resolve_config(TASConfig, preset=name).base, resolve_config(TASConfig, preset=name).prune_ratio)
              for name in ("cifar10-resnet56", "cifar10-resnet110", "cifar100-resnet32")}
    assert ratios == {"cifar10-resnet56": ("resnet56", 0.47), "cifar10-resnet110": ("resnet110", 0.57),
                      "cifar100-resnet32": ("resnet32", 0.6)}
    for name, base in (("imagenet-resnet18", "resnet18"), ("imagenet-resnet50", "resnet50")):
        cfg = resolve_config(TASConfig, preset=name)  # configs/search-opts/ImageNet-ResNet.config: 115 + 5
        assert (cfg.base, cfg.epochs, cfg.warmup_epochs, cfg.weight_decay, cfg.lr, cfg.nesterov, cfg.batch_size) == (
            base, 120, 5, 1e-4, 0.1, True, 256)
    tiny = resolve_config(TASConfig, preset="tiny")
    assert tiny.base == "resnet20" and tiny.epochs < 20
    from nas_common import get_method
    assert get_method("tas") is TASSearch


@pytest.mark.parametrize("preset", ["cifar10-resnet164", "imagenet-resnet18", "imagenet-resnet50"])
def test_unreleased_ratios_are_the_released_configs_fraction(preset: str) -> None:
    """No FLOP ratio was released for these bases: the preset is the released configuration's estimated
    FLOPs over the unpruned network's, to two digits."""
    from tas_nas.archs import RELEASED
    from tas_nas.model import base_spec
    cfg = resolve_config(TASConfig, preset=preset)
    rel = next(r for r in RELEASED.values() if r.base == cfg.base)
    full = shapes_macs(resnet_conv_shapes(base_spec(cfg.base), rel.input, rel.num_classes))
    assert cfg.prune_ratio == round(rel.published_mflops * 1e6 / full, 2)


def test_prune_ratio_target_without_budget(tmp_path: Path) -> None:
    result, arch = run_search("tas", _task(), out=tmp_path / "r", preset="tiny",
                              overrides={**MICRO, "prune_ratio": 0.6}, progress=False)
    assert result.metrics["target_macs"] == pytest.approx(0.6 * RESNET20_MACS)
    assert result.metrics["base_macs"] == RESNET20_MACS
    # the derived arch is the argmax net, and its MACs are what the cost table says
    spec = arch.spec
    assert shapes_macs(resnet_conv_shapes(spec, arch.net["input"], arch.net["num_classes"])) == arch.costs["macs"]
    assert result.metrics["derived_macs"] == arch.costs["macs"]
    assert arch.space == "resnet" and arch.spec["block"] == "basic" and len(arch.spec["depths"]) == 3


def test_derive_is_the_argmax_and_falls_back_to_the_last_in_band_net() -> None:
    torch.manual_seed(0)
    from tas_nas.model import SearchResNet, base_spec
    model = SearchResNet(base_spec("resnet20"), 10, (3, 32, 32))
    layout = model.layout()
    full_w = [len(c) - 1 for c in layout["choices"]]
    small_w = [0] * len(full_w)
    state = {"width_logits": torch.nn.functional.one_hot(torch.tensor(full_w), 8).float(),
             "depth_logits": torch.tensor([[0.0, 0.0, 1.0]] * 3), "layout": layout, "base": "resnet20",
             "net": {"num_classes": 10, "input": [3, 32, 32]}, "target_macs": 0.5 * RESNET20_MACS,
             "tolerance_macs": 0.05 * RESNET20_MACS, "band_found": False, "feasible_found": False,
             "band_width_index": small_w, "band_depth_index": [0, 0, 0],
             "feasible_width_index": small_w, "feasible_depth_index": [0, 0, 0]}
    from nas_common import SearchResult
    arch = TASSearch().derive(SearchResult("tas", state=dict(state)))
    assert arch.spec == base_spec("resnet20")  # the argmax: full widths, full depths
    res = SearchResult("tas", state={**state, "band_found": True})
    arch = TASSearch().derive(res)
    assert arch.spec["depths"] == [1, 1, 1] and res.metrics["derived_from"] == "last-in-band"


def test_search_uses_only_cifar_sized_inputs_it_is_given(tmp_path: Path) -> None:
    """A grey 3-class npz-like dataset: the stem takes the dataset's channels, the classifier its classes."""
    import numpy as np

    from nas_common.data.datasets import from_arrays
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(48, 16, 16), dtype=np.uint8)
    y = np.arange(48) % 3
    ds = from_arrays("grey", x, y, x[:12], y[:12])
    _, arch = run_search("tas", Task(ds), out=tmp_path / "g", preset="tiny", overrides=MICRO, progress=False)
    assert arch.net["input"] == [1, 16, 16] and arch.net["num_classes"] == 3
    assert arch.build()(torch.zeros(2, 1, 16, 16)).shape == (2, 3)


def test_retrain_with_kd_trains_the_teacher_first_and_reuses_it(tmp_path: Path) -> None:
    import tomllib

    from nas_common import load_model
    from tas_nas import retrain_with_kd, teacher_arch
    from tas_nas.model import base_spec
    ds = get_dataset("cifar10-mini").subset(32, 16)
    # the search's KD settings travel with the arch and are what the retraining uses
    _, arch = run_search("tas", _task(), out=tmp_path / "s", preset="tiny",
                         overrides={**MICRO, "kd_alpha": 0.3, "kd_temperature": 2.0}, progress=False)
    assert arch.provenance["retrain"] == {"kd_alpha": 0.3, "kd_temperature": 2.0}
    assert teacher_arch(arch).spec == base_spec("resnet20")
    over = {"epochs": 1, "batch_size": 16, "eval_every": 0}
    res = retrain_with_kd(arch, ds, out=tmp_path / "kd", preset="tiny", overrides=over, progress=False)
    teacher = tmp_path / "kd-teacher"
    assert (teacher / "model.pt").is_file() and (tmp_path / "kd" / "model.pt").is_file()
    assert load_model(teacher).fc.in_features == 64  # the unpruned ResNet-20
    assert res.arch == arch

    def kd_of(run: Path) -> tuple[float, float]:
        cfg = tomllib.loads((run / "config.toml").read_text())["config"]
        return cfg["kd_alpha"], cfg["kd_temperature"]

    assert kd_of(tmp_path / "kd") == (0.3, 2.0)
    stamp = (teacher / "model.pt").stat().st_mtime_ns
    retrain_with_kd(arch, ds, out=tmp_path / "kd", preset="tiny", overrides=over, overwrite=True, kd_alpha=0.7,
                    progress=False)
    assert (teacher / "model.pt").stat().st_mtime_ns == stamp  # the trained teacher is reused
    assert kd_of(tmp_path / "kd") == (0.7, 2.0)  # an explicit argument wins over the search's


def test_retraining_recipes_follow_the_network_kind() -> None:
    from nas_common import get_arch, resolve_config
    from nas_common.train import TrainConfig
    from tas_nas.retrain import kd_settings, recipe_for
    preset, over = recipe_for(get_arch("tas-imagenet-resnet18"))
    cfg = resolve_config(TrainConfig, preset=preset, overrides=over)
    # configs/opts/ImageNet-E120-Cos-Soft.config: 120 epochs + 5 warm-up, lr 0.1 Nesterov, wd 1e-4, batch 256
    assert (cfg.epochs, cfg.warmup_epochs, cfg.weight_decay, cfg.lr, cfg.nesterov, cfg.batch_size) == (
        125, 5, 1e-4, 0.1, True, 256)
    preset, over = recipe_for(get_arch("tas-cifar10-resnet56"))
    cfg = resolve_config(TrainConfig, preset=preset, overrides=over)
    assert (cfg.epochs, cfg.warmup_epochs, cfg.weight_decay, cfg.batch_size) == (300, 5, 5e-4, 256)
    assert kd_settings(get_arch("tas-cifar10-resnet56")) == {"kd_alpha": 0.9, "kd_temperature": 4.0}


def _small_images(n: int = 128, side: int = 8) -> Task:
    """Random 8x8 images in 10 classes: the FLOP target is what is tested, not accuracy (16x cheaper)."""
    import numpy as np

    from nas_common.data.datasets import from_arrays
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(n, side, side, 3), dtype=np.uint8)
    y = np.arange(n) % 10
    return Task(from_arrays("small", x, y, x[:16], y[:16]))


# 40 steps: enough for the distributions to travel from their random start to the target and settle
# there (logits N(0, 1), so that the argmax network changes a few convs at a time)
TARGET_RUN = {**MICRO, "epochs": 5, "batch_size": 8, "max_steps_per_epoch": 8, "arch_lr": 0.05,
              "arch_init_std": 1.0}


@pytest.mark.parametrize("ratio,mode", [(0.8, "both"), (0.3, "width")])
def test_final_distributions_reach_the_target(tmp_path: Path, ratio: float, mode: str) -> None:
    """A user who asks for 80% (or, width-only, 30%) of the MACs gets it within the tolerance (5% of the
    base MACs) from the final distributions' argmax, which started outside the band: not from the
    fallback to an earlier argmax network."""
    task = _small_images()
    over = {**TARGET_RUN, "prune_ratio": ratio, "mode": mode}
    result, arch = run_search("tas", task, out=tmp_path / "r", preset="tiny", overrides=over, progress=False)
    m = result.metrics
    assert m["target_macs"] == pytest.approx(ratio * m["base_macs"])
    assert not m["target_macs"] - m["tolerance_macs"] <= m["initial_argmax_macs"] <= m["target_macs"]
    assert m["derived_from"] == "final", m
    assert m["argmax_macs"] == arch.costs["macs"]
    assert abs(arch.costs["macs"] - m["target_macs"]) <= m["tolerance_macs"], (arch.costs["macs"], m)
    assert m["within_tolerance"]


def test_budget_macs_sets_the_target(tmp_path: Path) -> None:
    task = _small_images()
    base = 40_813_184 / 16  # ResNet-20 on 8x8 inputs
    task.budget = Budget(macs=0.8 * base)
    result, arch = run_search("tas", task, out=tmp_path / "b", preset="tiny", overrides=TARGET_RUN, progress=False)
    m = result.metrics
    assert m["target_macs"] == 0.8 * base and m["base_macs"] == pytest.approx(base, rel=0.02)
    assert m["derived_from"] == "final" and abs(arch.costs["macs"] - 0.8 * base) <= m["tolerance_macs"]


def test_weight_steps_read_the_weight_half_and_arch_steps_the_other(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """Every image the weight step trains on is from the first half of TAS's per-class split, every image the
    architecture step sees is from the second: swapping the two loaders fails this test."""
    from nas_common import make_loader
    from tas_nas import SearchResNet
    from tas_nas.search import _halves
    task = _task()
    seen: dict[str, list[torch.Tensor]] = {"weights": [], "arch": []}
    forward = SearchResNet.forward

    def spy(self, x, sample):  # noqa: ANN001, ANN202
        seen["arch" if sample[1].requires_grad else "weights"].append(x.detach().clone())
        return forward(self, x, sample)

    monkeypatch.setattr(SearchResNet, "forward", spy)
    run_search("tas", task, out=tmp_path / "h", preset="tiny", overrides={**MICRO, "augment": False}, progress=False)
    train_half, valid_half = _halves(task)

    def keys(split) -> set[bytes]:  # noqa: ANN001
        (x, _), = make_loader(split, len(split), train=False)
        return {row.numpy().tobytes() for row in x}

    k_train, k_valid = keys(train_half), keys(valid_half)
    assert k_train.isdisjoint(k_valid)
    for kind, half in (("weights", k_train), ("arch", k_valid)):
        rows = {row.numpy().tobytes() for x in seen[kind] for row in x}
        assert seen[kind] and rows <= half, kind


def test_each_optimiser_moves_only_its_own_parameters() -> None:
    from tas_nas.flops import FlopTable
    from tas_nas.search import SearchStep, build_search_model
    task = _task()
    cfg = resolve_config(TASConfig, preset="tiny", overrides=MICRO)
    model = build_search_model(cfg, task)
    step = SearchStep(model, FlopTable(model), cfg, 0.5 * RESNET20_MACS, 0.05 * RESNET20_MACS)
    w_ids = {id(p) for g in step.w_opt.param_groups for p in g["params"]}
    a_ids = {id(p) for g in step.a_opt.param_groups for p in g["params"]}
    assert a_ids == {id(model.width_logits), id(model.depth_logits)}
    assert w_ids == {id(p) for p in model.parameters()} - a_ids


class _HostSync(AssertionError):
    pass


def _guard(orig, name: str):  # noqa: ANN001, ANN202
    import sys

    def f(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("tas_nas"):
            raise _HostSync(f"{name} called from {caller} inside a search step")
        return orig(*args, **kwargs)

    return f


def test_no_host_sync_in_a_search_step(monkeypatch) -> None:  # noqa: ANN001
    """No call that reads a device value back to the host (on CUDA, a sync) is made by tas_nas inside a step:
    .item(), .tolist(), bool()/float()/int() of a tensor, .cpu(), .numpy(), torch.multinomial, nonzero,
    masked_select, unique. (The gpu test below checks the same on CUDA with the sync debug mode.)"""
    from tas_nas.flops import FlopTable
    from tas_nas.search import SearchStep, build_search_model
    task = _task()
    for mode in ("both", "width", "depth"):
        cfg = resolve_config(TASConfig, preset="tiny", overrides={**MICRO, "mode": mode})
        torch.manual_seed(0)
        model = build_search_model(cfg, task).train()
        step = SearchStep(model, FlopTable(model), cfg, 0.5 * RESNET20_MACS, 0.05 * RESNET20_MACS)
        x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
        with monkeypatch.context() as mp:
            for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy",
                         "nonzero", "unique", "masked_select"):
                mp.setattr(torch.Tensor, name, _guard(getattr(torch.Tensor, name), f"Tensor.{name}"))
            for name in ("multinomial", "nonzero", "masked_select", "unique"):
                mp.setattr(torch, name, _guard(getattr(torch, name), f"torch.{name}"))
            stats = step(x, y, x, y, 2.0)
        assert stats.shape == (5,) and torch.isfinite(stats).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_sync_in_a_search_step_on_cuda() -> None:
    from tas_nas.flops import FlopTable
    from tas_nas.search import SearchStep, build_search_model
    task = _task()
    cfg = resolve_config(TASConfig, preset="tiny", overrides=MICRO)
    model = build_search_model(cfg, task).cuda().train()
    step = SearchStep(model, FlopTable(model).cuda(), cfg, 0.5 * RESNET20_MACS, 0.05 * RESNET20_MACS)
    x, y = torch.randn(8, 3, 32, 32, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
    step(x, y, x, y, 2.0)  # warm-up: lazy initialisation (optimiser states) may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step(x, y, x, y, 2.0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("mode", ["width", "depth"])
def test_ablation_modes_search_one_dimension(tmp_path: Path, mode: str) -> None:
    """TAS(W) keeps every stage at full depth, TAS(D) every conv at full width; the other dimension is searched."""
    from tas_nas.model import base_spec
    result, arch = run_search("tas", _task(), out=tmp_path / mode, preset="tiny",
                              overrides={**MICRO, "mode": mode, "prune_ratio": 0.4, "arch_init_std": 1.0},
                              progress=False)
    full = base_spec("resnet20")
    if mode == "width":
        assert arch.spec["depths"] == full["depths"] and arch.spec["widths"] != full["widths"]
    else:
        assert arch.spec["depths"] != full["depths"] and arch.spec["stem"] == 16
        assert all(w == [16, 16] or w == [32, 32] or w == [64, 64] for st in arch.spec["widths"] for w in st)
    assert arch.provenance["mode"] == mode


def test_sampled_widths_k_reaches_the_network() -> None:
    from tas_nas.search import build_search_model
    cfg = resolve_config(TASConfig, preset="tiny", overrides={**MICRO, "sampled_widths": 3})
    model = build_search_model(cfg, _task())
    idx, p, _ = model.sample(1.0)
    assert idx.shape == (model.width_logits.shape[0], 3) and p.shape == idx.shape
    assert model(torch.randn(2, 3, 32, 32), (idx, p, model.sample(1.0)[2])).shape == (2, 10)


def test_tau_of_each_epoch_follows_the_configured_schedule(tmp_path: Path) -> None:
    import json
    over = {**MICRO, "epochs": 3, "max_steps_per_epoch": 1}
    for extra, taus in (({}, [10.0, 10.0 - 9.9 / 3, 10.0 - 2 * 9.9 / 3]),
                        ({"tau_schedule": "cosine", "tau_max": 5.0}, [5.0, 0.1 + 4.9 * 0.75, 0.1 + 4.9 * 0.25])):
        out = tmp_path / str(len(extra))
        run_search("tas", _task(), out=out, preset="tiny", overrides={**over, **extra}, progress=False)
        logged = [json.loads(line)["tau"] for line in (out / "metrics.jsonl").read_text().splitlines()
                  if "tau" in json.loads(line)]
        assert logged == pytest.approx(taus)


def test_warm_up_then_cosine() -> None:
    from tas_nas.search import lr_factor
    f = [lr_factor(e, 10, 2, 0.1, 0.0) for e in range(10)]
    assert f[:2] == pytest.approx([0.5, 1.0]) and f[2] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(f[2:], f[3:], strict=False))
    assert [lr_factor(e, 10, 0, 0.1, 0.0) for e in (0, 5)] == pytest.approx([1.0, 0.5])
