"""Costs of a network: MACs (multiply-accumulates, what papers call FLOPs), params, memory, latency,
distributed makespan, and per-choice cost tables for differentiable expected costs.
"""
from ..registry import COSTS
from .macs import count_macs
from .params import count_params

__all__ = ["COSTS", "count_costs", "count_macs", "count_params"]


def count_costs(model, input_shape, device="cpu") -> dict[str, float]:  # noqa: ANN001
    """{"macs": ..., "params": ...} of `model` for one input of shape (C, H, W)."""
    return {"macs": float(count_macs(model, input_shape, device=device)), "params": float(count_params(model))}
