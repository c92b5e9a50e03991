"""Training recipes of the official ISTA-NAS evaluation scripts, as nas_common `TrainConfig`s.

    nas train ista-nas-two-stage --dataset cifar10 --preset darts-eval --out runs/ista2      # CIFAR-10
    nas train ista-nas-imagenet --dataset imagefolder:/data/imagenet \\
        --config <(python -m ista_nas.recipes imagenet) --out runs/ista-imagenet              # ImageNet

CIFAR-10 (`tools/evaluation.py --auxiliary --cutout`): nas_common's `darts-eval` preset is that recipe
(600 epochs, batch 96, SGD 0.025 momentum 0.9, wd 3e-4, cosine, cutout 16, drop path 0.2, auxiliary
0.4, grad clip 5).

ImageNet (`tools/evaluation_imagenet.py`, PC-DARTS' `train_imagenet.py`, run with `--auxiliary` as
PC-DARTS' README does): C 48, 14 cells, 250 epochs, batch 1024, SGD lr 0.5 momentum 0.9 (no Nesterov),
wd 3e-5, label smoothing 0.1, auxiliary weight 0.4, grad clip 5, no drop path, 5 warm-up epochs. Two
parts cannot be expressed by TrainConfig today: its default schedule is a *linear* decay
(0.5·(245 − e)/245, with a gentler slope over the last 5 epochs; the script's `--lr_scheduler cosine`
is its other choice, used here) and its warm-up sets lr·(e+1)/5 (TrainConfig's warm-up ramps
(e+1)/(w+1)). `python -m ista_nas.recipes imagenet` prints the recipe as TOML for `nas train --config`.
"""
from __future__ import annotations

import sys
from typing import Any

from nas_common.config import resolve_config, to_toml
from nas_common.errors import ConfigError
from nas_common.train import TrainConfig

#: The ImageNet evaluation recipe of the official code, in TrainConfig fields (see the module docstring).
IMAGENET_RECIPE: dict[str, Any] = {
    "epochs": 250, "batch_size": 1024, "optimizer": "sgd", "lr": 0.5, "momentum": 0.9, "nesterov": False,
    "weight_decay": 3e-5, "schedule": "cosine", "lr_min": 0.0, "warmup_epochs": 5, "label_smoothing": 0.1,
    "grad_clip": 5.0, "cutout": 0, "drop_path": 0.0, "auxiliary_weight": 0.4,
}

#: recipe name -> (TrainConfig preset it starts from, values on top)
RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "cifar10": ("darts-eval", {}),
    "imagenet": ("paper", IMAGENET_RECIPE),
}


def train_config(name: str, **overrides: Any) -> TrainConfig:
    """The TrainConfig of recipe `name` ("cifar10" or "imagenet"), with `overrides` on top."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}: valid: {', '.join(RECIPES)}")
    preset, values = RECIPES[name]
    return resolve_config(TrainConfig, preset=preset, values={**values, **overrides})


def imagenet_train_config(**overrides: Any) -> TrainConfig:
    """The official ImageNet evaluation recipe as a TrainConfig (see the module docstring)."""
    return train_config("imagenet", **overrides)


def main(argv: list[str] | None = None) -> int:
    """`python -m ista_nas.recipes NAME`: print the recipe's TrainConfig values as TOML (for `nas train
    --config`; apply it on top of `--preset paper`, the default)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in RECIPES:
        print(f"usage: python -m ista_nas.recipes {{{','.join(RECIPES)}}}", file=sys.stderr)
        return 2
    preset, values = RECIPES[args[0]]
    print(to_toml(dict(resolve_config(TrainConfig, preset=preset, values=values).to_dict())), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
