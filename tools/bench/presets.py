"""Harness presets: which data, how much of it, which method preset, and the one shared retrain recipe.

`smoke` is the main job of `make demo` (every method, minutes on a 2-core CPU); `mini` the README's
table (the whole of cifar10-mini, longer retraining); `cifar10` the real comparison (needs --data-dir).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BenchPreset:
    name: str
    dataset: str
    n_train: int | None  # first N training images (None: all)
    n_test: int | None
    method_preset: str  # each method's config preset
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # per method name
    retrain_preset: str = "tiny"  # nas_common.train.TrainConfig preset: the one shared recipe
    retrain_overrides: dict[str, Any] = field(default_factory=dict)
    # evaluation-network size per space for the shared recipe (e.g. DARTS cells at CPU size); applied to
    # every architecture of that space alike, the reference networks included
    net: dict[str, dict[str, Any]] = field(default_factory=dict)
    baselines: tuple[str, ...] = ("resnet20", "resnet56", "darts-v2")
    random_per_space: int = 1  # random architectures of each method's space at about its MACs
    rank_samples: int = 0  # archs per weight-sharing method for the Kendall-tau ranking check
    rank_overrides: dict[str, Any] = field(default_factory=dict)  # retrain recipe for the ranking check
    budget_macs: float | None = None


PRESETS: dict[str, BenchPreset] = {
    # seconds: checks that everything is wired (the harness's own tests use it)
    "micro": BenchPreset(
        name="micro", dataset="cifar10-mini", n_train=64, n_test=32, method_preset="tiny",
        method_overrides={"bsn": {"val_size": 16, "batch_size": 16}},
        retrain_preset="tiny", retrain_overrides={"epochs": 1, "batch_size": 32},
        net={"darts": {"C": 4, "layers": 3, "auxiliary": False}},
        baselines=("resnet20",), random_per_space=1, rank_samples=2,
        rank_overrides={"epochs": 1, "batch_size": 32},
    ),
    "smoke": BenchPreset(
        name="smoke", dataset="cifar10-mini", n_train=1024, n_test=500, method_preset="tiny",
        method_overrides={"bsn": {"val_size": 128}},
        retrain_preset="tiny", retrain_overrides={"epochs": 2, "batch_size": 64},
        net={"darts": {"C": 8, "layers": 5, "auxiliary": False}},
        baselines=("resnet20", "darts-v2"), random_per_space=1, rank_samples=3,
        rank_overrides={"epochs": 1, "batch_size": 64},
    ),
    "mini": BenchPreset(
        name="mini", dataset="cifar10-mini", n_train=None, n_test=None, method_preset="tiny",
        retrain_preset="tiny", retrain_overrides={"epochs": 5, "batch_size": 64, "lr": 0.05},
        net={"darts": {"C": 16, "layers": 8, "auxiliary": False}},
        baselines=("resnet20", "resnet56", "darts-v2"), random_per_space=1, rank_samples=3,
        rank_overrides={"epochs": 1, "batch_size": 64},
        budget_macs=24.49e6,  # 60% of ResNet-20's MACs, for the methods that take a budget
    ),
    "cifar10": BenchPreset(
        name="cifar10", dataset="cifar10", n_train=None, n_test=None, method_preset="paper",
        retrain_preset="darts-eval", retrain_overrides={},
        net={}, baselines=("resnet20", "resnet56", "darts-v2"), random_per_space=2, rank_samples=10,
        rank_overrides={"epochs": 20},
    ),
}
