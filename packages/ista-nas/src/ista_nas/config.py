"""ISTA-NAS configuration: the paper's (official script's) values as defaults, presets `paper` and `tiny`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from nas_common.config import Config


@dataclass(frozen=True)
class OneStageConfig(Config):
    """One-stage search (`mode = "one-stage"`): the target net trained on all training data.

    The network is the evaluation network (`eval_C`, `eval_layers`, `eval_auxiliary` of ISTAConfig).
    Search epochs run at the constant learning rate `lr` until every node is frozen (or
    `max_search_epochs`); then the op weights are absorbed and the network trains `epochs` more epochs
    with a cosine schedule and drop path ramped to `drop_path`.
    """

    batch_size: int = 96
    lr: float = 0.025
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_weight_decay: float = 1e-3
    epochs: int = 600
    max_search_epochs: int = 150
    freeze_tol: float = 1e-3
    drop_path: float = 0.2
    cutout: int = 16
    auxiliary_weight: float = 0.4
    max_params: float = 3.7e6  # size guard: reject a selection whose network is larger


@dataclass(frozen=True)
class ISTAConfig(Config):
    """ISTA-NAS (Yang et al., NeurIPS 2020). Two-stage defaults follow the official `main_search.sh`."""

    mode: Literal["two-stage", "one-stage"] = "two-stage"
    # compressed space and recovery
    steps: int = 4
    m: int = 7
    gamma: float = 1e-5
    b_init_std: float = 1e-3
    lasso_method: Literal["fista", "ista"] = "fista"
    lasso_tol: float = 1e-3  # optimality residual, relative to gamma
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
    # the derived (evaluation) network; in one-stage mode also the searched network
    eval_C: int = 36
    eval_layers: int = 20
    eval_auxiliary: bool = True
    # NHWC memory format for the searched networks: 2x faster search steps on a CPU (mkldnn's NHWC
    # depthwise convolutions), the usual gain on CUDA; the numbers are the same up to rounding
    channels_last: bool = True
    one_stage: OneStageConfig = field(default_factory=OneStageConfig)

    PRESETS: ClassVar[dict[str, dict]] = {
        "paper": {},
        # cifar10-mini on a laptop CPU: a few minutes (two-stage); one-stage at the same small size
        "tiny": {
            "C": 4, "layers": 4, "epochs": 6, "batch_size": 64, "lr": 0.05,
            "lasso_tol": 1e-2, "lasso_max_iter": 5000,
            "eval_C": 16, "eval_layers": 8,
            "one_stage": {"batch_size": 64, "epochs": 5, "max_search_epochs": 10, "cutout": 0,
                          "freeze_tol": 1e-2, "max_params": 1e9},
        },
    }

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, f"steps={self.steps} must be >= 1"),
            (self.m >= 1, f"m={self.m} must be >= 1 (the paper uses 7)"),
            (self.gamma > 0, f"gamma={self.gamma} must be > 0 (the paper uses 1e-5)"),
            (self.C >= 1 and self.layers >= 1, "C and layers must be >= 1"),
            (self.eval_C >= 1 and self.eval_layers >= 1, "eval_C and eval_layers must be >= 1"),
            (self.epochs >= 1, f"epochs={self.epochs} must be >= 1"),
            (self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1"),
            (0.0 < self.train_fraction < 1.0, f"train_fraction={self.train_fraction} must be in (0, 1)"),
            (self.lasso_max_iter >= 1, "lasso_max_iter must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
