"""Harness presets: which data, how much of it, which method preset, the one shared retrain recipe, and
how many seeds and baselines the evidence protocol trains.

`micro` checks the wiring in seconds (the harness's tests); `smoke` is the main job of `make demo` (every
method, minutes on a 2-core CPU, one seed: its accuracies check the wiring only); `mini` the older
single-seed table; `evidence` the full protocol, meant for under 2 hours on this project's 2-core CPU with
`--jobs 2` (1 h 15 min measured: see its comment); `cifar10` the same protocol on CIFAR-10 at the
papers' settings (a GPU; needs --data-dir).

The evidence protocol, per method and seed: the found network retrained with the shared recipe; at least
`random_per_space` random architectures of its space within `mac_tolerance` of its MACs; the space's
reference network scaled to the same MACs (`reference`); random search at equal wall time
(`random_search`); all judged on the test split, which no search or choice sees. Kendall's tau of the
ranking hook over `rank_samples` architectures on the first `rank_seeds` seeds.
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
    # fixed built-in networks at their own cost, retrained once per seed (context, not a paired baseline)
    baselines: tuple[str, ...] = ("resnet20", "resnet56", "darts-v2")
    random_per_space: int = 1  # random architectures of each method's space within mac_tolerance of its MACs
    rank_samples: int = 0  # archs per weight-sharing method for the Kendall-tau ranking check
    rank_overrides: dict[str, Any] = field(default_factory=dict)  # retrain recipe for the ranking check
    budget_macs: float | None = None
    seeds: tuple[int, ...] = (0,)  # the default of --seeds
    mac_tolerance: float = 0.05  # |MACs / found MACs - 1| of the random and reference baselines
    reference: bool = False  # the space's reference network scaled to each found network's MACs
    references: dict[str, str] = field(default_factory=dict)  # space -> built-in reference (default: matching.py)
    random_search: bool = False  # random search at the method's search time (Li & Talwalkar, 2019)
    rs_recipe_preset: str = "tiny"  # the brief training of each random-search candidate
    rs_overrides: dict[str, Any] = field(default_factory=dict)
    rs_n_train: int | None = None  # candidates train on the first N images of the fit part (None: all of it)
    val_fraction: float = 0.1  # of the training images, held out for random search's choice
    split_seed: int = 0  # which images are held out (the same for every seed and method)
    rank_seeds: int | None = 1  # the ranking check runs on the first N seeds (None: all)
    alpha: float = 0.05  # level of the one-sided tests behind the verdicts
    note: str = ""  # what the preset's numbers mean, printed with its table and written into results.md


WIRING_ONLY = ("its accuracies check the wiring only (one seed, a few epochs on a small subset: differences "
               "between rows are noise); `--preset evidence` measures the methods")

PRESETS: dict[str, BenchPreset] = {
    # seconds: checks that everything is wired (the harness's own tests use it, with fake methods)
    "micro": BenchPreset(
        name="micro", dataset="cifar10-mini", n_train=64, n_test=32, method_preset="tiny",
        method_overrides={"bsn": {"val_size": 16, "batch_size": 16}},
        retrain_preset="tiny", retrain_overrides={"epochs": 1, "batch_size": 32, "eval_every": 0},
        net={"darts": {"C": 4, "layers": 3, "auxiliary": False}},
        baselines=("resnet20",), random_per_space=1, rank_samples=2,
        rank_overrides={"epochs": 1, "batch_size": 32}, reference=True, random_search=True,
        rs_overrides={"epochs": 1, "batch_size": 16, "eval_every": 0}, rs_n_train=32, val_fraction=0.25,
        note=f"preset micro (the harness's tests): {WIRING_ONLY}",
    ),
    "smoke": BenchPreset(
        name="smoke", dataset="cifar10-mini", n_train=1024, n_test=500, method_preset="tiny",
        method_overrides={"bsn": {"val_size": 128}},
        retrain_preset="tiny", retrain_overrides={"epochs": 2, "batch_size": 64},
        net={"darts": {"C": 8, "layers": 5, "auxiliary": False}},
        baselines=("resnet20", "darts-v2"), random_per_space=1, rank_samples=3,
        rank_overrides={"epochs": 1, "batch_size": 64},
        note=f"preset smoke (make demo): {WIRING_ONLY}",
    ),
    "mini": BenchPreset(
        name="mini", dataset="cifar10-mini", n_train=None, n_test=None, method_preset="tiny",
        retrain_preset="tiny", retrain_overrides={"epochs": 5, "batch_size": 64, "lr": 0.05},
        net={"darts": {"C": 16, "layers": 8, "auxiliary": False}},
        baselines=("resnet20", "resnet56", "darts-v2"), random_per_space=1, rank_samples=3,
        rank_overrides={"epochs": 1, "batch_size": 64},
        budget_macs=24.49e6,  # 60% of ResNet-20's MACs, for the methods that take a budget
    ),
    # the evidence protocol on cifar10-mini (the first 2,500 of its 4,660 training images, its 500 test
    # images), 3 seeds: 3 retrain epochs, DARTS-space networks at C 8 / 5 cells, random-search candidates
    # 1 epoch on the 2,250 training images outside the validation part. Sized for under 2 hours with
    # --jobs 2 on this project's 2-core CPU (`python -m tools.bench --preset evidence --jobs 2 --estimate`
    # says ~1:15; its run in docs/bench/evidence took 1 h 15 min). On all 4,660 images the same protocol
    # took ~2 h 57 min (partly beside other work), so it trains on fewer images rather than on fewer
    # seeds, baselines or epochs. DARTS-space training (nat and ista-nas) runs ~4x slower per MAC than
    # ResNets here.
    "evidence": BenchPreset(
        name="evidence", dataset="cifar10-mini", n_train=2500, n_test=None, method_preset="tiny",
        retrain_preset="tiny", retrain_overrides={"epochs": 3, "batch_size": 64, "lr": 0.05, "eval_every": 0},
        net={"darts": {"C": 8, "layers": 5, "auxiliary": False}},
        baselines=(), random_per_space=5, rank_samples=8, rank_seeds=1,
        rank_overrides={"epochs": 1, "batch_size": 64, "eval_every": 0},
        budget_macs=24.49e6, seeds=(0, 1, 2), reference=True, random_search=True,
        rs_overrides={"epochs": 1, "batch_size": 64, "lr": 0.05, "eval_every": 0}, val_fraction=0.1,
    ),
    "cifar10": BenchPreset(
        name="cifar10", dataset="cifar10", n_train=None, n_test=None, method_preset="paper",
        retrain_preset="darts-eval", retrain_overrides={"eval_every": 0},
        net={}, baselines=("resnet20", "resnet56", "darts-v2"), random_per_space=5, rank_samples=10,
        rank_overrides={"epochs": 20, "eval_every": 0}, seeds=(0, 1, 2), reference=True, random_search=True,
        rs_overrides={"epochs": 10, "eval_every": 0}, rank_seeds=None, val_fraction=0.1,
    ),
}
