"""ista_nas: ISTA-NAS (Yang et al., NeurIPS 2020), neural architecture search as sparse coding.

    from ista_nas import ISTASearch, ISTAConfig
    # or through nas_common: run_search("ista-nas", task, preset="tiny", out="runs/ista")

Two-stage search (compressed codes b searched by gradient on a sparse DARTS supernet, architectures z
recovered by an exact batched LASSO solver every epoch) and one-stage search (the target network
trained while it is searched; op weights absorbed into BN at the end). Registered as the `ista-nas`
method of nas_common; also registers the `darts-bn` space (the one-stage network), the published
ISTA-NAS cells as built-in archs (`ista-nas-two-stage`, `ista-nas-one-stage`, `ista-nas-imagenet`) and the
`macs-ptflops` cost (multiply-adds as the published ImageNet tables count them) and the `nas train`
preset `ista-imagenet` (the official ImageNet evaluation recipe, `ista_nas.recipes`).
"""
from importlib import metadata as _metadata

from .archs import ISTA_IMAGENET, ISTA_ONE_STAGE, ISTA_TWO_STAGE, published_arch
from .coding import (
    ISTA_PRIMITIVES,
    CompressedCode,
    genotype_from_support,
    support_weights,
    top_support,
    uniform_supports,
)
from .config import ISTAConfig, OneStageConfig
from .costs import count_macs_ptflops
from .lasso import LassoError, LassoResult, kkt_violation, lasso, lipschitz, soft_threshold
from .network import DartsBNSpace, SparseForward, absorb
from .search import ISTASearch

try:
    __version__ = _metadata.version("ista-nas")
except _metadata.PackageNotFoundError:  # pragma: no cover
    __version__ = "0.0.0"

__all__ = [
    "ISTA_IMAGENET", "ISTA_ONE_STAGE", "ISTA_PRIMITIVES", "ISTA_TWO_STAGE", "CompressedCode", "DartsBNSpace",
    "ISTAConfig", "ISTASearch", "LassoError", "LassoResult", "OneStageConfig", "SparseForward", "absorb",
    "count_macs_ptflops", "genotype_from_support", "kkt_violation", "lasso", "lipschitz", "published_arch",
    "soft_threshold", "support_weights", "top_support", "uniform_supports",
]
