"""Parameter counts."""
from __future__ import annotations

from torch import nn


def count_params(model: nn.Module, trainable_only: bool = False, exclude: tuple[str, ...] = ("auxiliary",)) -> int:
    """Number of parameters, leaving out auxiliary heads (not part of the deployed network, as in DARTS)."""
    return sum(p.numel() for n, p in model.named_parameters()
               if (p.requires_grad or not trainable_only) and not any(e in n.split(".")[0] for e in exclude))
