"""TAS's retraining recipes as `nas train` presets: `nas train ARCH --preset tas` (CIFAR) and
`--preset tas-imagenet`.

    tas           300 epochs of which 5 are a linear warm-up, batch 256, SGD Nesterov 0.1, momentum 0.9,
                  wd 5e-4, cosine to 0 (the official `configs/opts/CIFAR-E300-W5-L1-COS.config`; the
                  official code runs the 5 warm-up epochs on top of the 300)
    tas-imagenet  120 + 5 warm-up epochs, batch 256, SGD Nesterov 0.1, wd 1e-4, cosine, plain
                  cross-entropy (`configs/opts/ImageNet-E120-Cos-Soft.config`)

Registered with nas_common on import. This module is imported by `tas_nas.archs`, the package's
`nas_common.spaces` entry point, so `nas train --preset tas` finds the recipe without `tas_nas`
being imported first.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any

from nas_common.errors import RegistryError
from nas_common.train import TrainConfig, register_train_preset
from nas_common.train.config import TRAIN_PRESETS

__all__ = ["TRAIN_RECIPES", "register_train_presets"]

#: TrainConfig values over its defaults (SGD 0.1 Nesterov, momentum 0.9, wd 5e-4, cosine to 0)
TRAIN_RECIPES: MappingProxyType[str, dict[str, Any]] = MappingProxyType({
    "tas": {"epochs": 300, "batch_size": 256, "warmup_epochs": 5},
    "tas-imagenet": {"epochs": 125, "batch_size": 256, "warmup_epochs": 5, "weight_decay": 1e-4},
})


def register_train_presets() -> None:
    """Register `TRAIN_RECIPES` with nas_common (once per process).

    nas-common 0.2 still carries a built-in `tas` preset with the same values (it moves here); where
    registering a name that nas-common already has raises, the built-in is kept when it is the same
    recipe, and a different one is an error."""
    for name, values in TRAIN_RECIPES.items():
        if TRAIN_PRESETS.registered(name):  # this module imported a second time
            continue
        try:
            register_train_preset(name, values)
        except RegistryError:
            if dict(TrainConfig.PRESETS[name]) != values:
                raise


register_train_presets()
