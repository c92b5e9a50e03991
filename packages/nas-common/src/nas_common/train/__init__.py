"""Training: the `Trainer` (AMP, channels_last, DDP, exact resume, NaN guard), the KD loss, recipes.

    from nas_common.train import train_arch, Trainer, TrainConfig, evaluate, distill_loss

`nas_common.train(arch, dataset=...)` (this package is callable) trains in one call; `train_arch` is
what `nas train` runs (a run directory in, a trained model out); `Trainer` is the loop
for methods that train networks themselves (TAS retrains with a teacher through it). See
`nas_common.train.trainer` for the full Python API.
"""
import sys as _sys
import types as _types

from .api import TrainResult, fit_arch_to_dataset, resolve_train_config, train, train_arch
from .config import TrainConfig, list_train_presets, register_train_preset
from .distill import distill_loss
from .trainer import Trainer, TrainingDiverged, evaluate, lr_factor

__all__ = [
    "TrainConfig", "TrainResult", "Trainer", "TrainingDiverged", "distill_loss", "evaluate",
    "fit_arch_to_dataset", "list_train_presets", "lr_factor", "register_train_preset", "resolve_train_config",
    "train", "train_arch",
]


class _CallableModule(_types.ModuleType):
    """This package, callable: `nas_common.train(arch, dataset=...)` is `nas_common.train.train(...)`."""

    def __call__(self, *args, **kwargs) -> TrainResult:  # noqa: ANN002, ANN003
        return train(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
