"""The published ISTA-NAS cells as built-in architectures (`nas list`, `nas train NAME`, `nas cost NAME`).

Transcribed from the official repository (iboing/ISTA-NAS @226e49f, `tools/genotypes.py`):

=====================  ========  ====================================================================
name                   space     network
=====================  ========  ====================================================================
ista-nas-two-stage     darts     `ISTA_twostage`, CIFAR-10: C 36, 20 cells, auxiliary (retrain it with
                                 `--preset darts-eval`)
ista-nas-one-stage     darts-bn  `ISTA_onestage`, CIFAR-10, with the BN after each parameter-free op that
                                 the one-stage search trains (the official `--onestage` evaluation)
ista-nas-imagenet      darts     `ISTA_ImageNet`: DARTS' ImageNet network, C 48, 14 cells, auxiliary,
                                 224x224, 1000 classes (`tools/evaluation_imagenet.py`)
=====================  ========  ====================================================================

The official genotypes list each node's two entries as `(op, input)` in the order the official code
found them; they are kept in that order (the network is the same either way).
"""
from __future__ import annotations

from typing import Any

from nas_common.arch import Arch, register_arch
from nas_common.registry import ARCHS
from nas_common.spaces.darts import Genotype, genotype_to_spec

_CONCAT = [2, 3, 4, 5]

ISTA_TWO_STAGE = Genotype(
    normal=[("skip_connect", 0), ("dil_conv_3x3", 1), ("sep_conv_5x5", 0), ("dil_conv_3x3", 2),
            ("dil_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 2), ("skip_connect", 0)],
    normal_concat=_CONCAT,
    reduce=[("avg_pool_3x3", 0), ("sep_conv_5x5", 1), ("dil_conv_5x5", 2), ("max_pool_3x3", 1),
            ("dil_conv_5x5", 3), ("sep_conv_3x3", 1), ("dil_conv_5x5", 4), ("sep_conv_5x5", 1)],
    reduce_concat=_CONCAT,
)

ISTA_ONE_STAGE = Genotype(
    normal=[("skip_connect", 0), ("dil_conv_3x3", 1), ("sep_conv_3x3", 1), ("dil_conv_5x5", 2),
            ("avg_pool_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_5x5", 1), ("sep_conv_3x3", 2)],
    normal_concat=_CONCAT,
    reduce=[("avg_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 0), ("max_pool_3x3", 1),
            ("sep_conv_5x5", 1), ("avg_pool_3x3", 0), ("max_pool_3x3", 0), ("dil_conv_5x5", 2)],
    reduce_concat=_CONCAT,
)

ISTA_IMAGENET = Genotype(
    normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 2),
            ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("dil_conv_5x5", 4)],
    normal_concat=_CONCAT,
    reduce=[("skip_connect", 0), ("sep_conv_3x3", 1), ("dil_conv_5x5", 2), ("sep_conv_3x3", 0),
            ("sep_conv_3x3", 0), ("skip_connect", 2), ("sep_conv_3x3", 2), ("skip_connect", 3)],
    reduce_concat=_CONCAT,
)

CIFAR_NET: dict[str, Any] = {"C": 36, "layers": 20, "auxiliary": True, "num_classes": 10, "input": [3, 32, 32]}
IMAGENET_NET: dict[str, Any] = {"C": 48, "layers": 14, "auxiliary": True, "num_classes": 1000,
                                "input": [3, 224, 224], "stem": "imagenet"}

#: name -> (space, genotype, net)
PUBLISHED: dict[str, tuple[str, Genotype, dict[str, Any]]] = {
    "ista-nas-two-stage": ("darts", ISTA_TWO_STAGE, CIFAR_NET),
    "ista-nas-one-stage": ("darts-bn", ISTA_ONE_STAGE, CIFAR_NET),
    "ista-nas-imagenet": ("darts", ISTA_IMAGENET, IMAGENET_NET),
}


def published_arch(name: str) -> Arch:
    """The built-in Arch `name` (one of `PUBLISHED`)."""
    space, genotype, net = PUBLISHED[name]
    return Arch(space, genotype_to_spec(genotype), dict(net), method="ista-nas",
                provenance={"source": "iboing/ISTA-NAS@226e49f tools/genotypes.py", "published": name})


def _factory(name: str) -> Any:
    def factory() -> Arch:
        return published_arch(name)

    return factory


for _name in PUBLISHED:
    if not ARCHS.registered(_name):  # importing twice (reload) must not register twice
        register_arch(_name, _factory(_name))

__all__ = ["ISTA_IMAGENET", "ISTA_ONE_STAGE", "ISTA_TWO_STAGE", "PUBLISHED", "published_arch"]
