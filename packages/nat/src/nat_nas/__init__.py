"""nat_nas: NAT, the Neural Architecture Transformer (Guo et al., NeurIPS 2019), on nas_common.

NAT takes a cell architecture of the DARTS space (a published genotype, a user's arch.json, or a
hand-crafted ResNet/VGG/MobileNetV2 cell) and replaces redundant ops by skip connections or removes them (null),
with a GCN policy trained by REINFORCE on a weight-sharing supernet; the output never costs more than
the input. The method is registered as `nat` (`nas search nat ...`).
"""
from importlib import metadata as _metadata

from . import archs
from .cells import Cell, CellPair, edge_kind, random_cell
from .policy import GCN, POLICIES, LSTMPolicy, NATPolicy, RandomPolicy, TransformPolicy, normalized_adjacency
from .search import FULLY_CONCAT_OPS, NATConfig, NATSearch, resolve_input_arch
from .transitions import ACTIONS, RULES, apply_actions, is_reachable, transition_mask

try:
    __version__ = _metadata.version("nat-nas")
except _metadata.PackageNotFoundError:  # pragma: no cover
    __version__ = "0.0.0"

__all__ = [
    "ACTIONS", "FULLY_CONCAT_OPS", "GCN", "POLICIES", "RULES", "Cell", "CellPair", "LSTMPolicy", "NATConfig",
    "NATPolicy", "NATSearch", "RandomPolicy", "TransformPolicy", "apply_actions", "archs", "edge_kind",
    "is_reachable", "normalized_adjacency", "random_cell", "resolve_input_arch", "transition_mask",
]
