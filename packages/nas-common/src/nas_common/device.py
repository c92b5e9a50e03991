"""Choosing the device at run time: CUDA when present, else CPU; never a hard-coded 'cuda:0'."""
from __future__ import annotations

import torch

from . import dist
from .errors import ConfigError


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """`None`/"auto" -> this rank's CUDA device when available, else CPU; a name is checked first."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", dist.local_rank() % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available here: use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return dev
