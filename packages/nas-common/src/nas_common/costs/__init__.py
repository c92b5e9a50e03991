"""Costs of a network: MACs (multiply-accumulates, what papers call FLOPs), params, memory, latency,
distributed makespan, and per-choice cost tables for differentiable expected costs.

`COSTS` maps a cost name to a `CostInfo`; a budget names a cost by key, `name` or `name:ARG`:

===============  ===================================================================================
macs             multiply-accumulates of conv and linear layers for one input (torch.utils.flop_counter)
params           parameter count (auxiliary heads excluded)
memory           weight + peak activation bytes for one input (measured on CUDA, hook estimate elsewhere)
latency:DEVICE   median seconds of one forward pass at batch 1, measured on DEVICE (default cpu)
distributed:K    makespan of the network's module DAG on K workers (networks that describe their DAG)
===============  ===================================================================================

Method packages register their own conventions (e.g. FLOPs with additions) with `register_cost`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import BudgetError, ConfigError, RegistryError
from ..registry import COSTS
from .distributed import makespan
from .latency import latency_stats, measure_latency
from .macs import count_macs
from .memory import measure_memory, memory_breakdown, weight_bytes
from .params import count_params
from .tables import (
    ConvShape,
    conv_macs,
    conv_params,
    expected_macs,
    op_costs,
    shapes_macs,
    shapes_params,
)

__all__ = [
    "COSTS", "ConvShape", "CostInfo", "build_on_meta", "check_fits", "check_input_shape", "conv_macs",
    "conv_params", "count_costs", "count_macs", "count_params",
    "expected_macs", "get_cost", "latency_stats", "list_costs", "makespan", "measure_cost", "measure_latency",
    "measure_memory",
    "memory_breakdown", "op_costs", "parse_cost_key", "register_cost", "shapes_macs",
    "shapes_params", "weight_bytes",
]


def check_input_shape(shape: Any) -> tuple[int, ...]:
    """`shape` as a (C, H, W) tuple of positive integers, or a one-line ConfigError (a 2-D shape, a
    batch dimension, a string ...)."""
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    ok = isinstance(shape, (tuple, list)) and len(shape) == 3 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
    if not ok:
        raise ConfigError(f"input_shape must be (C, H, W) of one input, e.g. (3, 32, 32) (no batch dimension), "
                          f"got {shape!r}")
    return tuple(shape)


def build_on_meta(arch: Any) -> nn.Module:
    """`arch.build()` on the meta device: every shape, no memory (so a mistaken 1e9-wide network or an
    ImageNet one is costed without allocating its weights). Weight initialisation is skipped: meta
    tensors hold no values, and torch runs their in-place random fills through Python decompositions
    that import torch._dynamo (seconds) on first use."""
    from .macs import _SkipMetaInit

    with torch.device("meta"), _SkipMetaInit():
        return arch.build()


def count_costs(model: Any, input_shape: Sequence[int] | None = None, device: torch.device | str | None = None
                ) -> dict[str, float]:
    """{"macs": ..., "params": ...} of `model` for one input of shape (C, H, W).

    `model` is an nn.Module or an `Arch`; an Arch is built on the meta device and counted there
    (exact, nothing allocated), on its own input shape unless `input_shape` is given."""
    from ..arch import Arch

    if isinstance(model, Arch):
        shape = check_input_shape(tuple(model.net["input"]) if input_shape is None else input_shape)
        return arch_costs_meta(model, shape)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"count_costs takes an nn.Module or an Arch, got {type(model).__name__}")
    if input_shape is None:
        raise ConfigError("count_costs(model, input_shape): give the (C, H, W) shape of one input, e.g. (3, 32, 32)")
    shape = check_input_shape(input_shape)
    return {"macs": float(count_macs(model, shape, device=device)), "params": float(count_params(model))}


def arch_costs_meta(arch: Any, input_shape: Sequence[int] | None = None) -> dict[str, float]:
    """MACs and params of `arch` counted on the meta device (see `build_on_meta`)."""
    from ..errors import NASError

    shape = check_input_shape(tuple(arch.net["input"]) if input_shape is None else tuple(input_shape))
    try:
        model = build_on_meta(arch)
        return {"macs": float(count_macs(model, shape, device="meta")), "params": float(count_params(model))}
    except NASError:
        raise
    except (NotImplementedError, RuntimeError, TypeError, ValueError) as e:
        if "overflow" in str(e):  # a tensor of more than 2**63 bytes: it cannot exist on any device
            first = str(e).strip().splitlines()[0]
            raise ConfigError(f"the {arch.space} network is too large to build ({first}): check its widths") from None
        # a network whose build or forward reads values (data-dependent shapes): count it for real
        model = arch.build()
        return {"macs": float(count_macs(model, shape)), "params": float(count_params(model))}


def _device_memory(device: torch.device) -> int | None:
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type == "cpu":
        try:
            import os

            return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return None


def check_fits(params: float, device: torch.device | str = "cpu", copies: int = 1, what: str = "network") -> None:
    """Refuse (ConfigError) a network whose float32 weights, times `copies` (4 for training: weights,
    gradients, optimizer state and activations), exceed `device`'s memory: said before building it,
    instead of the allocator failing."""
    dev = torch.device(device)
    total = _device_memory(dev)
    need = float(params) * 4 * copies
    if total is not None and need > total:
        raise ConfigError(f"the {what} has {params:.4g} parameters: {need / 2**30:.4g} GiB "
                          f"({'weights' if copies == 1 else f'{copies} x the weights'}) do not fit in the "
                          f"{total / 2**30:.4g} GiB of {dev}; check its widths, or use a smaller network")


# ---- the registry of named costs ------------------------------------------------------------------
@dataclass(frozen=True)
class CostInfo:
    """A cost a budget can name. Its key is `name` or `name:ARG` (`latency:cuda`, `distributed:2`).

    `measure(model, input_shape, arg, device)` returns the cost of one input. `arg` says what the
    argument is (None: the cost takes none); `parse_arg` checks it and gives it its type; `default_arg`
    applies when a key leaves it out. `measured` costs depend on the machine (latency, memory on CUDA);
    the others are counted exactly.
    """

    name: str
    unit: str
    description: str
    measure: Callable[[nn.Module, tuple[int, ...], Any, torch.device | str], float]
    arg: str | None = None
    parse_arg: Callable[[str], Any] | None = None
    default_arg: str | None = None
    measured: bool = False


def register_cost(info: CostInfo) -> CostInfo:
    """Make a cost nameable in budgets (a duplicate name raises)."""
    return COSTS.register(info.name, info)


def get_cost(name: str) -> CostInfo:
    """The cost registered as `name` (did-you-mean on a typo)."""
    return COSTS.get(name)


def list_costs() -> list[str]:
    return COSTS.names()


def parse_cost_key(key: str) -> tuple[CostInfo, Any, str]:
    """(cost, parsed argument, canonical key) of a budget key such as `macs` or `distributed:2`.

    Raises BudgetError naming the registered costs, or saying what argument the cost takes."""
    if not isinstance(key, str) or not key.strip():
        raise BudgetError(f"a cost name must be a non-empty string such as 'macs', got {key!r} "
                          f"(registered costs: {', '.join(list_costs())})")
    name, sep, raw = key.strip().partition(":")
    try:
        info = get_cost(name)
    except RegistryError as e:
        raise BudgetError(f"budget: {e}") from None
    if info.arg is None:
        if sep:
            raise BudgetError(f"the {name} cost takes no argument: write {name!r}, not {key!r}")
        return info, None, name
    raw = raw.strip() if sep else (info.default_arg or "")
    if not raw:
        raise BudgetError(f"the {name} cost needs its {info.arg}: write {name}:ARG (e.g. {name}:2)")
    try:
        arg = info.parse_arg(raw) if info.parse_arg else raw
    except (TypeError, ValueError) as e:
        raise BudgetError(f"{key!r}: {e}") from None
    return info, arg, f"{name}:{raw}"


def measure_cost(model: nn.Module, key: str, input_shape: Sequence[int], device: torch.device | str = "cpu"
                 ) -> float:
    """The cost named by `key` (see `parse_cost_key`) of `model` on one input of `input_shape`."""
    info, arg, _ = parse_cost_key(key)
    return float(info.measure(model, tuple(input_shape), arg, device))


def _k_workers(raw: str) -> int:
    k = int(raw) if raw.isdigit() else 0
    if k < 1:
        raise ValueError(f"the number of workers must be a positive integer, got {raw!r}")
    return k


def _distributed(model: nn.Module, input_shape: tuple[int, ...], k: int, device: Any) -> float:
    dag = getattr(model, "module_dag", None)
    if dag is None:
        raise BudgetError(f"the distributed cost is the makespan of a network's module DAG on K workers: "
                          f"{type(model).__name__} does not describe its DAG (networks of the bsn spaces do)")
    nodes, edges, node_costs = dag()
    return float(makespan(nodes, edges, node_costs, k))


for _info in (
    CostInfo("macs", "MACs", "multiply-accumulates of one forward pass (what papers call FLOPs)",
             lambda m, shape, arg, dev: float(count_macs(m, shape, device=dev))),
    CostInfo("params", "parameters", "parameter count (auxiliary heads excluded)",
             lambda m, shape, arg, dev: float(count_params(m))),
    CostInfo("memory", "bytes", "weights + peak activations of one forward pass (measured on CUDA)",
             lambda m, shape, arg, dev: float(measure_memory(m, shape, batch_size=1, device=dev)), measured=True),
    CostInfo("latency", "s", "median seconds of one forward pass at batch 1 on the named device",
             lambda m, shape, arg, dev: measure_latency(m, shape, batch_size=1, device=arg or dev),
             arg="device", default_arg="cpu", measured=True),
    CostInfo("distributed", "steps", "makespan of the module DAG on K workers (BSN's distributed cost)",
             _distributed, arg="number of workers K", parse_arg=_k_workers),
):
    if not COSTS.registered(_info.name):
        register_cost(_info)
