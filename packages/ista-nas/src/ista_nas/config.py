"""ISTA-NAS configuration: the paper's (official script's) values as defaults, presets `paper`, `tiny`, `imagenet`."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from nas_common.config import Config

from .lasso import METHODS


@dataclass(frozen=True)
class OneStageConfig(Config):
    """One-stage search (`mode = "one-stage"`): the target net searched and trained on all training data.

    The network is the evaluation network (`eval_C`, `eval_layers`, `eval_auxiliary`, `eval_stem` of
    ISTAConfig). Search epochs run at the constant learning rate `lr` until every node is frozen (at most
    `max_search_epochs`: the official code bounds its search loop by `epochs`), plus one more epoch with
    every node frozen, as the official code; then the same network, optimizer and fixed op weights train
    `epochs` more epochs with a cosine schedule to `lr_min` and drop path ramped to `drop_path`, and the
    op weights are absorbed into the BNs at the end.
    """

    batch_size: int = 96
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_weight_decay: float = 1e-3
    epochs: int = 600
    max_search_epochs: int = 600
    freeze_tol: float = 1e-3
    drop_path: float = 0.2
    cutout: int = 16
    auxiliary_weight: float = 0.4
    max_params: float = 3.7e6  # size guard: reject a selection whose network has this many params or more

    def __post_init__(self) -> None:
        checks = [
            (self.batch_size >= 1, f"one_stage.batch_size={self.batch_size} must be >= 1"),
            (self.epochs >= 0, f"one_stage.epochs={self.epochs} must be >= 0"),
            (self.max_search_epochs >= 1, f"one_stage.max_search_epochs={self.max_search_epochs} must be >= 1"),
            (self.freeze_tol >= 0, f"one_stage.freeze_tol={self.freeze_tol} must be >= 0 (the paper uses 1e-3)"),
            (0.0 <= self.drop_path < 1.0, f"one_stage.drop_path={self.drop_path} must be in [0, 1)"),
            (self.max_params > 0, f"one_stage.max_params={self.max_params} must be > 0 (inf turns the guard off)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


@dataclass(frozen=True)
class ISTAConfig(Config):
    """ISTA-NAS (Yang et al., NeurIPS 2020). Two-stage defaults follow the official `main_search.sh`."""

    mode: Literal["two-stage", "one-stage"] = "two-stage"
    # compressed space and recovery
    steps: int = 4
    m: int = 7
    gamma: float = 1e-5
    b_init_std: float = 1e-3
    # "homotopy": the exact LASSO (the search stops with an error if a node fails); "fista"/"ista":
    # iterative, for comparison, with the tolerance (relative to gamma) and iteration cap below; the search
    # stops with an error rather than adopt a node they did not converge on
    lasso_method: Literal["homotopy", "fista", "ista"] = "homotopy"
    lasso_tol: float = 1e-3
    lasso_max_iter: int = 20_000
    # two-stage search network and schedule
    C: int = 16
    layers: int = 8
    epochs: int = 50
    batch_size: int = 256
    train_fraction: float = 0.5
    lr: float = 0.1
    lr_min: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 6e-4
    arch_beta1: float = 0.5
    arch_beta2: float = 0.999
    arch_weight_decay: float = 1e-3
    # the derived (evaluation) network; in one-stage mode also the searched network. eval_stem "imagenet"
    # is DARTS' ImageNet network (three stride-2 stem convs, ImageNet auxiliary head; C 48, 14 cells)
    eval_C: int = 36
    eval_layers: int = 20
    eval_auxiliary: bool = True
    eval_stem: Literal["cifar", "imagenet"] = "cifar"
    # NHWC memory format for the searched networks: 2x faster search steps on a CPU (mkldnn's NHWC
    # depthwise convolutions), the usual gain on CUDA; the numbers are the same up to rounding
    channels_last: bool = True
    one_stage: OneStageConfig = field(default_factory=OneStageConfig)

    PRESETS: ClassVar[dict[str, dict]] = {
        "paper": {},
        # cifar10-mini on a laptop CPU: a few minutes (two-stage); one-stage at the same small size
        "tiny": {
            "C": 4, "layers": 4, "epochs": 6, "batch_size": 64, "lr": 0.05,
            "eval_C": 16, "eval_layers": 8,
            "one_stage": {"batch_size": 64, "epochs": 5, "max_search_epochs": 10, "cutout": 0,
                          "freeze_tol": 1e-2, "max_params": 1e9},
        },
        # the ImageNet network of the official `tools/evaluation_imagenet.py` (C 48, 14 cells, DARTS'
        # ImageNet stem): what a two-stage search derives (retrain it with ista_nas.recipes' ImageNet
        # recipe) and, in one-stage mode, the searched network. The official size guard (3.7M params)
        # is for the CIFAR network, and no official one-stage ImageNet search exists, so it is off here.
        "imagenet": {
            "eval_C": 48, "eval_layers": 14, "eval_stem": "imagenet",
            "one_stage": {"max_params": math.inf, "cutout": 0},
        },
    }

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, f"steps={self.steps} must be >= 1"),
            (self.m >= 1, f"m={self.m} must be >= 1 (the paper uses 7)"),
            (self.gamma > 0, f"gamma={self.gamma} must be > 0 (the paper uses 1e-5)"),
            (self.C >= 1 and self.layers >= 1, "C and layers must be >= 1"),
            (self.eval_C >= 1 and self.eval_layers >= 1, "eval_C and eval_layers must be >= 1"),
            (self.eval_stem != "imagenet" or self.eval_C % 2 == 0,
             f"eval_C={self.eval_C} must be even with eval_stem=imagenet (its first stem conv has eval_C/2 channels)"),
            (self.epochs >= 1, f"epochs={self.epochs} must be >= 1"),
            (self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1"),
            (0.0 < self.train_fraction < 1.0, f"train_fraction={self.train_fraction} must be in (0, 1)"),
            (self.lasso_method in METHODS, f"lasso_method={self.lasso_method!r}: use one of {', '.join(METHODS)}"),
            (self.lasso_max_iter >= 1, "lasso_max_iter must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
