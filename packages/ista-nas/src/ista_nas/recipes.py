"""Training recipes of the official ISTA-NAS evaluation scripts, as nas_common `TrainConfig` presets.

    nas train ista-nas-two-stage --dataset cifar10 --preset darts-eval --out runs/ista2          # CIFAR-10
    nas train ista-nas-imagenet --dataset imagefolder:/data/imagenet --preset ista-imagenet \\
        --out runs/ista-imagenet                                                               # ImageNet

CIFAR-10 (`tools/evaluation.py --auxiliary --cutout`): nas_common's `darts-eval` preset is that recipe
(600 epochs, batch 96, SGD 0.025 momentum 0.9, wd 3e-4, cosine, cutout 16, drop path 0.2, auxiliary
0.4, grad clip 5).

ImageNet (`tools/evaluation_imagenet.py`, PC-DARTS' `train_imagenet.py`, run with `--auxiliary` as
PC-DARTS' README does), registered here as the preset `ista-imagenet`: C 48, 14 cells (the arch's net),
250 epochs, batch 1024, SGD lr 0.5 momentum 0.9 (no Nesterov), wd 3e-5, label smoothing 0.1, auxiliary
weight 0.4, grad clip 5, no drop path, no cutout. Its warm-up sets lr·(e+1)/5 for the epochs e < 5
(batch > 256), so epoch 4 already runs at the full lr; TrainConfig's warm-up ramps (e+1)/(w+1) over w
epochs and then starts the schedule at the full lr, so `warmup_epochs = 4` gives exactly the official
factors 0.2, 0.4, 0.6, 0.8, 1.0 for epochs 0-4. Its default schedule, a *linear* decay
(lr·(245 − e)/245, then a gentler slope over the last 5 epochs), TrainConfig cannot express: the
script's other choice, `--lr_scheduler cosine`, is used (cosine to 0, here over the epochs after the
warm-up).
"""
from __future__ import annotations

from typing import Any

from nas_common.config import resolve_config
from nas_common.errors import ConfigError
from nas_common.train.config import TRAIN_PRESETS, TrainConfig, register_train_preset

#: The ImageNet evaluation recipe of the official code, in TrainConfig fields (see the module docstring).
IMAGENET_RECIPE: dict[str, Any] = {
    "epochs": 250, "batch_size": 1024, "optimizer": "sgd", "lr": 0.5, "momentum": 0.9, "nesterov": False,
    "weight_decay": 3e-5, "schedule": "cosine", "lr_min": 0.0, "warmup_epochs": 4, "label_smoothing": 0.1,
    "grad_clip": 5.0, "cutout": 0, "drop_path": 0.0, "auxiliary_weight": 0.4,
}

#: `nas train --preset NAME` recipes this package registers
TRAIN_RECIPES: dict[str, dict[str, Any]] = {"ista-imagenet": IMAGENET_RECIPE}

#: recipe -> the TrainConfig preset that is it
RECIPES: dict[str, str] = {"cifar10": "darts-eval", "imagenet": "ista-imagenet"}

for _name, _values in TRAIN_RECIPES.items():
    if not TRAIN_PRESETS.registered(_name):  # importing twice (reload) must not register twice
        register_train_preset(_name, _values)


def train_config(name: str, **overrides: Any) -> TrainConfig:
    """The TrainConfig of recipe `name` ("cifar10" or "imagenet"), with `overrides` on top."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}: valid: {', '.join(RECIPES)}")
    return resolve_config(TrainConfig, preset=RECIPES[name], values=overrides)


def imagenet_train_config(**overrides: Any) -> TrainConfig:
    """The official ImageNet evaluation recipe as a TrainConfig (the `ista-imagenet` preset)."""
    return train_config("imagenet", **overrides)


__all__ = ["IMAGENET_RECIPE", "RECIPES", "TRAIN_RECIPES", "imagenet_train_config", "train_config"]
