"""Costs of a network: MACs (multiply-accumulates, what papers call FLOPs), params, memory, latency,
distributed makespan, and per-choice cost tables for differentiable expected costs.

`COSTS` maps a cost name to a function `f(model, input_shape, device="cpu") -> float`:

=========  ==========================================================================================
macs       multiply-accumulates of conv and linear layers for one input (torch.utils.flop_counter)
params     parameter count (auxiliary heads excluded)
memory     weight + peak activation bytes for one input (measured on CUDA, hook estimate elsewhere)
latency    median seconds of one forward pass at batch 1 (measured on the device)
=========  ==========================================================================================
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..registry import COSTS
from .distributed import makespan
from .latency import measure_latency
from .macs import count_macs
from .memory import measure_memory, memory_breakdown, weight_bytes
from .params import count_params
from .tables import (
    ConvShape,
    conv_macs,
    conv_params,
    expected_macs,
    op_costs,
    resnet_conv_shapes,
    shapes_macs,
    shapes_params,
)

__all__ = [
    "COSTS", "ConvShape", "conv_macs", "conv_params", "count_costs", "count_macs", "count_params", "expected_macs",
    "get_cost", "list_costs", "makespan", "measure_latency", "measure_memory", "memory_breakdown", "op_costs",
    "resnet_conv_shapes", "shapes_macs", "shapes_params", "weight_bytes",
]


def count_costs(model, input_shape, device="cpu") -> dict[str, float]:  # noqa: ANN001
    """{"macs": ..., "params": ...} of `model` for one input of shape (C, H, W)."""
    return {"macs": float(count_macs(model, input_shape, device=device)), "params": float(count_params(model))}


def _macs(model: nn.Module, input_shape: Sequence[int], device: torch.device | str = "cpu") -> float:
    return float(count_macs(model, tuple(input_shape), device=device))


def _params(model: nn.Module, input_shape: Sequence[int] = (), device: torch.device | str = "cpu") -> float:
    return float(count_params(model))


def _memory(model: nn.Module, input_shape: Sequence[int], device: torch.device | str = "cpu") -> float:
    return float(measure_memory(model, tuple(input_shape), batch_size=1, device=device))


def _latency(model: nn.Module, input_shape: Sequence[int], device: torch.device | str = "cpu") -> float:
    return measure_latency(model, tuple(input_shape), batch_size=1, device=device)


for _name, _fn in (("macs", _macs), ("params", _params), ("memory", _memory), ("latency", _latency)):
    if _name not in COSTS:
        COSTS.register(_name, _fn)


def get_cost(name: str):  # noqa: ANN201
    """The cost function registered as `name` (did-you-mean on a typo)."""
    return COSTS.get(name)


def list_costs() -> list[str]:
    return COSTS.names()
