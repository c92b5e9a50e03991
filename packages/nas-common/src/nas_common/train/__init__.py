"""Training: the `Trainer` (AMP, channels_last, DDP, exact resume, NaN guard), the KD loss, recipes.

    from nas_common.train import train_arch, Trainer, TrainConfig, evaluate, distill_loss

`train_arch` is what `nas train` runs (a run directory in, a trained model out); `Trainer` is the loop
for methods that train networks themselves (TAS retrains with a teacher through it). See
`nas_common.train.trainer` for the full Python API.
"""
from .api import TrainResult, fit_arch_to_dataset, resolve_train_config, train_arch
from .config import TrainConfig, list_train_presets, register_train_preset
from .distill import distill_loss
from .trainer import Trainer, TrainingDiverged, evaluate, lr_factor

__all__ = [
    "TrainConfig", "TrainResult", "Trainer", "TrainingDiverged", "distill_loss", "evaluate",
    "fit_arch_to_dataset", "list_train_presets", "lr_factor", "register_train_preset", "resolve_train_config",
    "train_arch",
]
