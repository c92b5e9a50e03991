"""`TASConfig`: TAS's search hyperparameters (the paper's values as defaults) and its presets.

    paper              CIFAR-10 ResNet-56 at 0.47 of its FLOPs (the official script's ratio), 600 epochs,
                       batch 256 train + 256 validation images per step, SGD Nesterov 0.1 (wd 5e-4,
                       cosine to 0) for the weights, Adam 1e-3 (betas 0.5/0.999, wd 1e-3) for the
                       width/depth distributions, tau linearly 10 -> 0.1 (the paper's text), K = 2 sampled
                       widths, FLOP-loss weight 2, tolerance 0.05 of the unpruned MACs, widths int(C*r)
                       for r = 0.3 .. 1.0, KD alpha 0.9, T 4 for the retraining.
    official           the same with the official script's tau schedule (cosine 5 -> 0.1).
    cifar10-resnet56   = paper; cifar10-resnet110 (ratio 0.57), cifar100-resnet32 (0.6): the ratios the
                       official code's documentation and its issue #59 give. cifar10-resnet164 (0.70),
                       imagenet-resnet18 (0.62), imagenet-resnet50 (0.56): no ratio was released for
                       these; each is the released searched configuration's FLOPs over the unpruned
                       network's, rounded (see `archs`).
    imagenet-*         the official ImageNet search recipe (`configs/search-opts/ImageNet-ResNet.config`):
                       120 epochs of which 5 warm-up, SGD Nesterov 0.1, wd 1e-4, batch 256.
    tiny               ResNet-20 on cifar10-mini in a few CPU minutes (same code, fewer and smaller steps).

The FLOP target is `task.budget.macs` (`--budget-macs`) when set, else `prune_ratio` times the MACs
of the unpruned base network (`-o prune_ratio=0.5`: "half the FLOPs"). `mode` chooses what is
searched: "both" (TAS), "width" (TAS(W), every stage at full depth) or "depth" (TAS(D), every conv at
full width), the paper's ablations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from nas_common import Config, ConfigError

from .ops import TAU_SCHEDULES

BASES = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet164", "resnet18", "resnet50")
MODES = ("both", "width", "depth")

_IMAGENET = {"epochs": 120, "warmup_epochs": 5, "weight_decay": 1e-4, "batch_size": 256, "lr": 0.1}


@dataclass(frozen=True)
class TASConfig(Config):
    """TAS search settings; defaults reproduce the paper's CIFAR-10 ResNet-56 search."""

    base: str = "resnet56"  # the unpruned network: CIFAR resnet20/32/44/56/110/164 or ImageNet resnet18/50
    prune_ratio: float = 0.47  # target MACs as a fraction of the base's (used when no --budget-macs is given)
    mode: Literal["both", "width", "depth"] = "both"  # what is searched: TAS, TAS(W), TAS(D)
    sampled_widths: int = 2  # K: widths drawn and mixed per conv in every forward
    epochs: int = 600
    warmup_epochs: int = 0  # linear warm-up of the weights' learning rate (per epoch), before the cosine
    batch_size: int = 256  # global (split over ranks): train images per weight step, validation images per arch step
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    lr_min: float = 0.0  # cosine floor
    arch_lr: float = 1e-3
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    arch_init_std: float = 0.01  # the width/depth logits start at N(0, std)
    tau_schedule: str = "linear"  # "linear" (the paper) or "cosine" (the official script)
    tau_max: float = 10.0
    tau_min: float = 0.1
    flop_weight: float = 2.0  # arch loss = CE + flop_weight * L_FLOP
    flop_tolerance: float = 0.05  # band below the target, as a fraction of the base's MACs
    width_ratios: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    augment: bool = True  # random crop + flip on both halves (as the official search)
    max_steps_per_epoch: int = 0  # 0 = a full pass over the train half; >0 caps the steps (CPU presets)
    kd_alpha: float = 0.9  # retraining (`retrain_with_kd`): weight of the distillation term
    kd_temperature: float = 4.0  # retraining: distillation temperature
    mix: str = "auto"  # how a conv mixes its widths: "dense" (a CxC matmul), "gather", or "auto"

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {},
        "official": {"tau_schedule": "cosine", "tau_max": 5.0, "tau_min": 0.1},
        "cifar10-resnet56": {},
        "cifar10-resnet110": {"base": "resnet110", "prune_ratio": 0.57},
        "cifar10-resnet164": {"base": "resnet164", "prune_ratio": 0.70},
        "cifar100-resnet32": {"base": "resnet32", "prune_ratio": 0.6},
        "imagenet-resnet18": {"base": "resnet18", "prune_ratio": 0.62, **_IMAGENET},
        "imagenet-resnet50": {"base": "resnet50", "prune_ratio": 0.56, **_IMAGENET},
        # ResNet-20 on cifar10-mini, 8 epochs of 12 steps at batch 32 (a few CPU minutes). The faster arch
        # lr lets the distributions travel in 96 steps about as far as the paper's do in ~100k; logits
        # that start at N(0, 1), not N(0, 0.01), are what the paper's are after many steps: spread, so
        # that an Adam step changes the argmax of a few convs, not of most (from N(0, 0.01) the argmax
        # network jumps across the 5% band every few steps, and the final one is seldom inside it).
        "tiny": {"base": "resnet20", "prune_ratio": 0.5, "epochs": 8, "batch_size": 32, "lr": 0.05,
                 "arch_lr": 0.02, "arch_init_std": 1.0, "max_steps_per_epoch": 12},
    }

    def __post_init__(self) -> None:
        if self.base not in BASES:
            raise ConfigError(f"base={self.base!r} is not a ResNet TAS can prune; choose one of {', '.join(BASES)}")
        if not 0.0 < self.prune_ratio <= 1.0:
            raise ConfigError(f"prune_ratio={self.prune_ratio} must be in (0, 1]: the fraction of the base "
                              f"network's MACs to keep, e.g. 0.5 for half")
        if self.mode not in MODES:
            raise ConfigError(f"mode={self.mode!r} is not one of {', '.join(map(repr, MODES))} (both = TAS, "
                              f"width = TAS(W), depth = TAS(D))")
        if not self.lr > 0 or not 0 <= self.lr_min <= self.lr:
            raise ConfigError(f"need lr > 0 and 0 <= lr_min <= lr, got lr={self.lr}, lr_min={self.lr_min}")
        for name in ("epochs", "batch_size", "sampled_widths"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ConfigError(f"warmup_epochs={self.warmup_epochs} must be in [0, epochs={self.epochs})")
        if self.max_steps_per_epoch < 0:
            raise ConfigError(f"max_steps_per_epoch={self.max_steps_per_epoch} must be >= 0 (0 = no cap)")
        if self.tau_schedule not in TAU_SCHEDULES:
            raise ConfigError(f"tau_schedule={self.tau_schedule!r} is not one of "
                              f"{', '.join(map(repr, TAU_SCHEDULES.names()))}")
        if not 0.0 < self.tau_min <= self.tau_max:
            raise ConfigError(f"need 0 < tau_min <= tau_max, got tau_min={self.tau_min}, tau_max={self.tau_max}")
        if not 0.0 <= self.flop_tolerance < 1.0:
            raise ConfigError(f"flop_tolerance={self.flop_tolerance} must be in [0, 1) (a fraction of the base MACs)")
        if not self.width_ratios or not all(0.0 < r <= 1.0 for r in self.width_ratios):
            raise ConfigError(f"width_ratios={self.width_ratios} must be fractions in (0, 1], e.g. 0.3,0.4,...,1.0")
        if max(self.width_ratios) != 1.0:
            raise ConfigError(f"width_ratios={self.width_ratios} must include 1.0 (the unpruned width)")
        if self.sampled_widths > len(set(self.width_ratios)):
            raise ConfigError(f"sampled_widths={self.sampled_widths} is more than the {len(set(self.width_ratios))} "
                              f"width ratios: use at most that many (2 in the paper)")
        if self.mix not in ("auto", "dense", "gather"):
            raise ConfigError(f"mix={self.mix!r} is not one of 'auto', 'dense', 'gather'")
        if not 0.0 <= self.kd_alpha <= 1.0 or self.kd_temperature <= 0:
            raise ConfigError(f"kd_alpha must be in [0, 1] and kd_temperature > 0, got {self.kd_alpha}, "
                              f"{self.kd_temperature}")
