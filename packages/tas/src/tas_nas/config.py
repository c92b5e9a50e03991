"""`TASConfig`: TAS's search hyperparameters (the paper's values as defaults) and its presets.

    paper   ResNet-56 on CIFAR, 600 epochs, batch 256 train + 256 validation images per step, SGD
            Nesterov 0.1 (wd 5e-4, cosine to 0) for the weights, Adam 1e-3 (betas 0.5/0.999, wd 1e-3)
            for the width/depth distributions, tau 5 -> 0.1 (cosine), FLOP-loss weight 2, tolerance
            0.05 of the unpruned MACs, widths int(C*r) for r = 0.3 .. 1.0, KD alpha 0.9, T 4.
    tiny    ResNet-20 on cifar10-mini in a few CPU minutes (same code, fewer and smaller steps).

The FLOP target is `task.budget.macs` (`--budget-macs`) when set, else `prune_ratio` times the MACs
of the unpruned base network (`-o prune_ratio=0.5`: "half the FLOPs").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from nas_common import Config, ConfigError

BASES = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet164", "resnet18", "resnet50")


@dataclass(frozen=True)
class TASConfig(Config):
    """TAS search settings; defaults reproduce the paper's CIFAR-10 ResNet-56 search."""

    base: str = "resnet56"  # the unpruned network: CIFAR resnet20/32/44/56/110/164 or ImageNet resnet18/50
    prune_ratio: float = 0.47  # target MACs as a fraction of the base's (used when no --budget-macs is given)
    epochs: int = 600
    batch_size: int = 256  # train images per weight step; as many validation images per arch step
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    lr_min: float = 0.0  # cosine floor
    arch_lr: float = 1e-3
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    arch_init_std: float = 0.01  # the width/depth logits start at N(0, std)
    tau_max: float = 5.0
    tau_min: float = 0.1
    flop_weight: float = 2.0  # arch loss = CE + flop_weight * L_FLOP
    flop_tolerance: float = 0.05  # band below the target, as a fraction of the base's MACs
    width_ratios: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    augment: bool = True  # random crop + flip on both halves (as the official search)
    max_steps_per_epoch: int = 0  # 0 = a full pass over the train half; >0 caps the steps (CPU presets)
    kd_alpha: float = 0.9  # retraining: weight of the distillation term (used by retrain_with_kd)
    kd_temperature: float = 4.0
    mix: str = "auto"  # how a conv mixes its two widths: "dense" (a CxC matmul), "gather", or "auto"

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {},
        # ResNet-20 on cifar10-mini, 8 epochs of 12 steps at batch 32 (a few CPU minutes). The faster arch
        # lr lets the distributions travel in 96 steps about as far as the paper's do in ~100k.
        "tiny": {"base": "resnet20", "prune_ratio": 0.5, "epochs": 8, "batch_size": 32, "lr": 0.05,
                 "arch_lr": 0.01, "max_steps_per_epoch": 12},
    }

    def __post_init__(self) -> None:
        if self.base not in BASES:
            raise ConfigError(f"base={self.base!r} is not a ResNet TAS can prune; choose one of {', '.join(BASES)}")
        if not 0.0 < self.prune_ratio <= 1.0:
            raise ConfigError(f"prune_ratio={self.prune_ratio} must be in (0, 1]: the fraction of the base "
                              f"network's MACs to keep, e.g. 0.5 for half")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        if self.max_steps_per_epoch < 0:
            raise ConfigError(f"max_steps_per_epoch={self.max_steps_per_epoch} must be >= 0 (0 = no cap)")
        if not 0.0 < self.tau_min <= self.tau_max:
            raise ConfigError(f"need 0 < tau_min <= tau_max, got tau_min={self.tau_min}, tau_max={self.tau_max}")
        if not 0.0 <= self.flop_tolerance < 1.0:
            raise ConfigError(f"flop_tolerance={self.flop_tolerance} must be in [0, 1) (a fraction of the base MACs)")
        if not self.width_ratios or not all(0.0 < r <= 1.0 for r in self.width_ratios):
            raise ConfigError(f"width_ratios={self.width_ratios} must be fractions in (0, 1], e.g. 0.3,0.4,...,1.0")
        if max(self.width_ratios) != 1.0:
            raise ConfigError(f"width_ratios={self.width_ratios} must include 1.0 (the unpruned width)")
        if self.mix not in ("auto", "dense", "gather"):
            raise ConfigError(f"mix={self.mix!r} is not one of 'auto', 'dense', 'gather'")
        if not 0.0 <= self.kd_alpha <= 1.0 or self.kd_temperature <= 0:
            raise ConfigError(f"kd_alpha must be in [0, 1] and kd_temperature > 0, got {self.kd_alpha}, "
                              f"{self.kd_temperature}")
