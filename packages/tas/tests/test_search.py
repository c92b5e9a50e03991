"""The search end to end at micro scale: conformance, the FLOP target, derive, configs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas_common import Budget, ConfigError, Task, get_dataset, resolve_config
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
    assert (paper.arch_lr, paper.arch_betas, paper.arch_weight_decay) == (1e-3, (0.5, 0.999), 1e-3)
    assert (paper.tau_max, paper.tau_min, paper.flop_weight, paper.flop_tolerance) == (5.0, 0.1, 2.0, 0.05)
    assert len(paper.width_ratios) == 8 and (paper.kd_alpha, paper.kd_temperature) == (0.9, 4.0)
    tiny = resolve_config(TASConfig, preset="tiny")
    assert tiny.base == "resnet20" and tiny.epochs < 20
    from nas_common import get_method
    assert get_method("tas") is TASSearch


@pytest.mark.parametrize("override,match", [({"base": "resnet19"}, "resnet20"), ({"prune_ratio": 1.5}, "fraction"),
                                            ({"width_ratios": (0.5, 0.8)}, "1.0"), ({"tau_min": 9.0}, "tau")])
def test_bad_configs_say_how_to_fix_them(override: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_config(TASConfig, preset="tiny", overrides=override)


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
    from nas_common import load_model
    from tas_nas import retrain_with_kd, teacher_arch
    from tas_nas.model import base_spec
    ds = get_dataset("cifar10-mini").subset(32, 16)
    _, arch = run_search("tas", _task(), out=tmp_path / "s", preset="tiny", overrides=MICRO, progress=False)
    assert teacher_arch(arch).spec == base_spec("resnet20")
    over = {"epochs": 1, "batch_size": 16, "eval_every": 0}
    res = retrain_with_kd(arch, ds, out=tmp_path / "kd", preset="tiny", overrides=over, progress=False)
    teacher = tmp_path / "kd-teacher"
    assert (teacher / "model.pt").is_file() and (tmp_path / "kd" / "model.pt").is_file()
    assert load_model(teacher).fc.in_features == 64  # the unpruned ResNet-20
    assert res.arch == arch
    stamp = (teacher / "model.pt").stat().st_mtime_ns
    retrain_with_kd(arch, ds, out=tmp_path / "kd", preset="tiny", overrides=over, overwrite=True, progress=False)
    assert (teacher / "model.pt").stat().st_mtime_ns == stamp  # the trained teacher is reused


def _small_images(n: int = 128, side: int = 16) -> Task:
    """Random 16x16 images in 10 classes: the FLOP target is what is tested, not accuracy (4x cheaper)."""
    import numpy as np

    from nas_common.data.datasets import from_arrays
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(n, side, side, 3), dtype=np.uint8)
    y = np.arange(n) % 10
    return Task(from_arrays("small", x, y, x[:16], y[:16]))


@pytest.mark.parametrize("ratio", [0.5, 0.3])
def test_derived_net_is_within_tolerance_of_the_target(tmp_path: Path, ratio: float) -> None:
    """A user who asks for half (or 30%) of the MACs gets it, within the tolerance (5% of the base MACs)."""
    task = _small_images()
    over = {**MICRO, "epochs": 3, "batch_size": 8, "max_steps_per_epoch": 8, "prune_ratio": ratio}
    result, arch = run_search("tas", task, out=tmp_path / "r", preset="tiny", overrides=over, progress=False)
    m = result.metrics
    assert m["target_macs"] == pytest.approx(ratio * m["base_macs"])
    assert abs(arch.costs["macs"] - m["target_macs"]) <= m["tolerance_macs"], (arch.costs["macs"], m)
    assert m["within_tolerance"]


def test_budget_macs_sets_the_target(tmp_path: Path) -> None:
    task = _small_images()
    base = 40_813_184 / 4  # ResNet-20 on 16x16 inputs
    task.budget = Budget(macs=0.4 * base)
    over = {**MICRO, "epochs": 3, "batch_size": 8, "max_steps_per_epoch": 8}
    result, arch = run_search("tas", task, out=tmp_path / "b", preset="tiny", overrides=over, progress=False)
    assert result.metrics["target_macs"] == 0.4 * base and result.metrics["base_macs"] == pytest.approx(base, rel=0.01)
    assert arch.costs["macs"] <= 0.4 * base + result.metrics["tolerance_macs"]
