"""The paper's recipes, by data set: the search's (supernet, prior, schedule, samples) and, derived from
them, the training presets `nas train` offers for retraining a found network from scratch.

The search reads `RECIPES` and `L2` for every `PosteriorConfig` field left unset (None). The training
presets (`pgnas-cifar`, `pgnas-imagenet`, registered by `posterior_nas.spaces`, the package's
`nas_common.spaces` entry point) apply the same schedule to a found network; the paper has no weight
decay, and its prior l2 (1 - p) / (2N) ||W||^2 on the kept weights (p -> 0) is a weight decay of l2 / N,
which the presets use in its place (TrainConfig decays every parameter, the prior only the searched convs).
Retraining is an option: the paper reports the networks with their inherited weights.
"""
from __future__ import annotations

from typing import Any, Literal

Recipe = Literal["cifar10", "cifar100", "imagenet"]

RECIPES: dict[str, dict[str, Any]] = {
    # supplementary §1.1: SupNet-M/MI, SGD lr 0.01 cosine without restarts, 1800 epochs, batch 128, cutout 16,
    # N 5e5; paper §3: C = 1500 (CIFAR-10), 5000 (CIFAR-100). Momentum and Nesterov are not stated for CIFAR.
    "cifar10": {"space": "supnet-mi", "N": 5e5, "num_samples": 1500, "epochs": 1800, "batch_size": 128, "lr": 0.01,
                "lr_schedule": "cosine", "nesterov": False, "cutout": 16},
    "cifar100": {"space": "supnet-mi", "N": 5e5, "num_samples": 5000, "epochs": 1800, "batch_size": 128, "lr": 0.01,
                 "lr_schedule": "cosine", "nesterov": False, "cutout": 16},
    # supplementary §1.2: SupNet-R-50, 90 epochs, lr 0.1 divided by 10 every 30, batch 256, SGD with Nesterov
    # momentum 0.9, no weight decay, N 1.2e6; paper §3: C = 1500.
    "imagenet": {"space": "supnet-r", "N": 1.2e6, "num_samples": 1500, "epochs": 90, "batch_size": 256, "lr": 0.1,
                 "lr_schedule": "step", "nesterov": True, "cutout": 0},
}
"""The paper's recipe per data set: the defaults of every field left unset (None)."""

L2: dict[str, dict[str, float]] = {
    # published (supplementary): C10 M 50, MI 150; C100 MI 2500; ImageNet R-50 80. The rest take the value
    # published for the same data set (C100) or the same supernet (the others).
    "cifar10": {"supnet-m": 50.0, "supnet-mi": 150.0, "supnet-r": 80.0},
    "cifar100": {"supnet-m": 2500.0, "supnet-mi": 2500.0, "supnet-r": 2500.0},
    "imagenet": {"supnet-m": 50.0, "supnet-mi": 150.0, "supnet-r": 80.0},
}
"""The prior precision l^2 per recipe and supernet."""


MOMENTUM = 0.9  # stated for ImageNet (Nesterov); the CIFAR recipes keep it, without Nesterov
LR_STEP, LR_GAMMA = 30, 0.1  # ImageNet: the learning rate divided by 10 every 30 epochs


def train_preset(recipe: Recipe) -> dict[str, Any]:
    """The TrainConfig values of a recipe's schedule, with its supernet's prior as the weight decay."""
    r = RECIPES[recipe]
    values: dict[str, Any] = {"epochs": r["epochs"], "batch_size": r["batch_size"], "lr": r["lr"],
                              "momentum": MOMENTUM, "nesterov": r["nesterov"], "cutout": r["cutout"],
                              "weight_decay": L2[recipe][r["space"]] / r["N"]}
    if r["lr_schedule"] == "step":
        values.update(schedule="step", milestones=tuple(range(LR_STEP, r["epochs"], LR_STEP)), gamma=LR_GAMMA)
    else:
        values.update(schedule="cosine", lr_min=0.0)
    return values


TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "pgnas-cifar": train_preset("cifar10"),  # SupNet-MI's recipe on CIFAR-10: weight decay 150 / 5e5 = 3e-4
    "pgnas-imagenet": train_preset("imagenet"),  # SupNet-R-50's: 90 epochs, step at 30 and 60, decay 80 / 1.2e6
}
"""`nas train ARCH --preset NAME`: the paper's schedules for retraining a found network from scratch."""

__all__ = ["L2", "RECIPES", "TRAIN_PRESETS", "Recipe", "train_preset"]
