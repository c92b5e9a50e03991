"""posterior_nas: one-shot NAS through a posteriori distribution guided sampling (Zhou et al., AAAI 2020).

    from posterior_nas import PosteriorSearch, PosteriorConfig

The method `posterior-nas` (entry point `nas_common.methods`), the spaces `supnet-m`, `supnet-mi`,
`supnet-r` and the training presets `pgnas-cifar`, `pgnas-imagenet` (entry point `nas_common.spaces`,
module `posterior_nas.spaces`).
"""
from importlib import metadata as _metadata

from .analysis import kendall_tau, standalone_accuracy
from .gates import GatedConv, Regulariser, regulariser
from .sampling import channel_rates, draw_masks, mean_drop_rate, sample_masks, score_masks
from .search import (
    RECIPES,
    PosteriorConfig,
    PosteriorSearch,
    dataset_recipe,
    finetune,
    held_out_split,
    split_held_out,
    supernet_net,
)
from .spaces import SPACES_BY_NAME, SupNetSpace, get_supnet_space
from .supernets import MPlan, Plan, RPlan, SupNet, inherit_weights

try:
    __version__ = _metadata.version("posterior-nas")
except _metadata.PackageNotFoundError:  # pragma: no cover
    __version__ = "0.0.0"

__all__ = [
    "RECIPES", "GatedConv", "MPlan", "Plan", "PosteriorConfig", "PosteriorSearch", "RPlan", "Regulariser",
    "SPACES_BY_NAME", "SupNet", "SupNetSpace", "channel_rates", "dataset_recipe", "draw_masks", "finetune",
    "get_supnet_space", "held_out_split", "inherit_weights", "kendall_tau", "mean_drop_rate", "regulariser",
    "sample_masks", "score_masks", "split_held_out", "standalone_accuracy", "supernet_net",
]
