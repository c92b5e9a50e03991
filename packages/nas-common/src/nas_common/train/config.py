"""`TrainConfig`: the hyperparameters of one training run, with named recipes as presets.

    paper       the generic CIFAR ResNet recipe: SGD 0.1 Nesterov, momentum 0.9, wd 5e-4, cosine to 0,
                batch 128, 300 epochs (the TAS retraining recipe without warm-up, at batch 128)
    tas         TAS's retraining recipe: as `paper` with batch 256 and 5 warm-up epochs
    darts-eval  the DARTS evaluation recipe: 600 epochs, batch 96, SGD 0.025 momentum 0.9 wd 3e-4,
                cosine to 0, cutout 16, drop path 0.2 (ramped linearly), auxiliary weight 0.4, grad clip 5
    tiny        a few CPU minutes: 2 epochs, batch 64

Small configs are configs, not different code paths: every preset runs the same `Trainer`. Method
packages add the recipes of their papers with `register_train_preset` (in the module their
`nas_common.spaces` entry point names, so `nas train --preset NAME` finds them without importing every
package); `list_train_presets()` lists them all.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ..config import Config
from ..errors import ConfigError
from ..registry import SPACE_GROUP, Registry

TRAIN_PRESETS: Registry[dict[str, Any]] = Registry("training preset", entry_point_group=SPACE_GROUP)


def register_train_preset(name: str, values: Mapping[str, Any]) -> None:
    """Add a named training recipe (TrainConfig values over the defaults); a duplicate name raises."""
    TRAIN_PRESETS.register(name, dict(values))


def list_train_presets() -> list[str]:
    return sorted(set(_BUILTIN) | set(TRAIN_PRESETS.names()))


class _Presets(Mapping[str, dict[str, Any]]):
    """TrainConfig.PRESETS: the built-in recipes and those packages register."""

    def __getitem__(self, name: str) -> dict[str, Any]:
        if name in _BUILTIN:
            return _BUILTIN[name]
        if name in TRAIN_PRESETS:
            return TRAIN_PRESETS.get(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(list_train_presets())

    def __len__(self) -> int:
        return len(list_train_presets())

    def __contains__(self, name: object) -> bool:
        return name in _BUILTIN or name in TRAIN_PRESETS


@dataclass(frozen=True)
class TrainConfig(Config):
    """How to train a network. Defaults are the `paper` preset (the generic ResNet recipe)."""

    epochs: int = 300
    batch_size: int = 128  # global: under DDP each of N ranks takes batch_size / N
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"  # stepped once per epoch
    lr_min: float = 0.0  # cosine floor
    warmup_epochs: int = 0  # linear warm-up before the schedule
    milestones: tuple[int, ...] = ()  # for schedule="step": epochs where lr *= gamma
    gamma: float = 0.1
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max global gradient norm; 0 turns clipping off
    augment: bool = True  # random crop (padding H/8) and horizontal flip
    cutout: int = 0  # side of the cutout square; 0 = off
    drop_path: float = 0.0  # final drop-path probability, ramped as drop_path * epoch / epochs
    auxiliary_weight: float = 0.0  # weight of the auxiliary head's loss when the model returns (logits, aux)
    kd_alpha: float = 0.9  # knowledge distillation (used only with a teacher): weight of the soft loss
    kd_temperature: float = 4.0
    amp: Literal["bf16", "fp16", "off"] = "bf16"  # mixed precision on CUDA (ignored on CPU)
    channels_last: bool = True  # NHWC memory format (CUDA and CPU: 1.3x faster training steps on this CPU)
    eval_every: int = 1  # evaluate on the test split every N epochs (and after the last); 0 = only at the end
    eval_batch_size: int = 256
    nan_check_every: int = 50  # steps between (cheap, batched) checks that the loss is still finite
    num_workers: int | None = None  # DataLoader workers of disk datasets (ImageFolder); None: the cores available

    PRESETS: ClassVar[Mapping[str, dict[str, Any]]] = _Presets()

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size,
                    "lr": self.lr, "kd_temperature": self.kd_temperature}
        for k, v in positive.items():
            if not v > 0:
                raise ConfigError(f"{k}={v!r} must be positive (e.g. -o {k}=...)")
        nonneg = {"momentum": self.momentum, "weight_decay": self.weight_decay, "lr_min": self.lr_min,
                  "warmup_epochs": self.warmup_epochs, "grad_clip": self.grad_clip, "cutout": self.cutout,
                  "auxiliary_weight": self.auxiliary_weight, "eval_every": self.eval_every,
                  "nan_check_every": self.nan_check_every}
        for k, v in nonneg.items():
            if v < 0:
                raise ConfigError(f"{k}={v!r} must be >= 0")
        for k, v in {"label_smoothing": self.label_smoothing, "drop_path": self.drop_path,
                     "kd_alpha": self.kd_alpha}.items():
            if not 0.0 <= v <= 1.0 or (k != "kd_alpha" and v >= 1.0):
                raise ConfigError(f"{k}={v!r} must be in [0, 1{']' if k == 'kd_alpha' else ')'}")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ConfigError(f"warmup_epochs={self.warmup_epochs} must be below epochs={self.epochs}")
        if self.schedule == "step" and not self.milestones:
            raise ConfigError("schedule=step needs milestones, e.g. -o milestones=[150,225]")
        if list(self.milestones) != sorted(self.milestones) or any(m <= 0 for m in self.milestones):
            raise ConfigError(f"milestones={list(self.milestones)} must be increasing positive epochs")
        if self.schedule == "step" and self.milestones and self.milestones[0] <= self.warmup_epochs:
            raise ConfigError(f"milestones={list(self.milestones)} must come after the warm-up "
                              f"(warmup_epochs={self.warmup_epochs})")
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(f"num_workers={self.num_workers} must be >= 0 (or none: the cores available)")
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise ConfigError("nesterov=true needs momentum > 0: set -o momentum=0.9 or -o nesterov=false")


_BUILTIN: dict[str, dict[str, Any]] = {
    "paper": {},
    "tas": {"epochs": 300, "batch_size": 256, "warmup_epochs": 5},
    "darts-eval": {
        "epochs": 600, "batch_size": 96, "lr": 0.025, "momentum": 0.9, "nesterov": False,
        "weight_decay": 3e-4, "schedule": "cosine", "lr_min": 0.0, "cutout": 16, "drop_path": 0.2,
        "auxiliary_weight": 0.4, "grad_clip": 5.0,
    },
    "tiny": {"epochs": 2, "batch_size": 64, "lr": 0.05, "eval_batch_size": 256},
}
