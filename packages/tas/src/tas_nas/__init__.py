"""tas_nas: network pruning via Transformable Architecture Search (Dong & Yang, NeurIPS 2019).

    from nas_common import Budget, Task, get_dataset
    from nas_common.search import run_search
    result, arch = run_search("tas", Task(get_dataset("cifar10-mini")), preset="tiny", out="runs/tas")

`TASSearch` searches a width per conv and a depth per stage of a CIFAR/ImageNet ResNet under a FLOP
target; `derive` writes the pruned network as a "resnet"-space arch.json, which is then retrained from
scratch with knowledge distillation from the unpruned network (`retrain_with_kd`).
"""
from importlib import metadata as _metadata

from . import archs  # registers the released searched configurations as built-in archs
from .archs import RELEASED, official_estimate_mflops, released_arch
from .config import TASConfig
from .flops import FlopTable, flop_loss
from .model import SearchResNet, base_spec, spec_from_indices, tas_depth_choices
from .ops import SearchConvBN, channelwise_interpolate, cwi_index, cwi_matrix, select_k, select_two
from .retrain import retrain_with_kd, teacher_arch, train_teacher
from .search import TASSearch

try:
    __version__ = _metadata.version("tas-nas")
except _metadata.PackageNotFoundError:  # pragma: no cover
    __version__ = "0.0.0"

__all__ = ["TASSearch", "TASConfig", "RELEASED", "archs", "official_estimate_mflops", "released_arch", "SearchResNet",
           "SearchConvBN", "FlopTable", "flop_loss", "base_spec",
           "channelwise_interpolate", "cwi_index", "cwi_matrix", "select_k", "select_two", "spec_from_indices",
           "tas_depth_choices", "retrain_with_kd", "teacher_arch", "train_teacher"]
