"""The search-method protocol every method package implements, and what flows through it.

A method is a class registered under the entry-point group `nas_common.methods`. The `nas search`
command and the harness build a `Task`, resolve the method's config, call `search(task, config, run)`
and then `derive(result)`, which applies the paper's final-architecture rule and returns an `Arch`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch

from .errors import BudgetError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .arch import Arch
    from .data import Dataset
    from .runs import Run


@dataclass(frozen=True)
class Budget:
    """A cost budget: multiply-accumulates (what papers call FLOPs) and/or parameter count."""

    macs: float | None = None
    params: float | None = None

    def __post_init__(self) -> None:
        for name in ("macs", "params"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise BudgetError(f"budget {name}={v!r} must be a positive number (e.g. --budget-{name} 40e6)")

    @property
    def is_set(self) -> bool:
        return self.macs is not None or self.params is not None

    def violations(self, costs: dict[str, float]) -> list[str]:
        """Human-readable reasons why `costs` break this budget (empty when within it)."""
        out = []
        for name in ("macs", "params"):
            limit = getattr(self, name)
            if limit is not None and name in costs and costs[name] > limit:
                out.append(f"{name} {costs[name]:.4g} > budget {limit:.4g}")
        return out

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class Task:
    """What to search on: data, device, seed and budget. Built by the CLI or the harness."""

    dataset: Dataset
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    budget: Budget = field(default_factory=Budget)

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.dataset.input_shape


@dataclass
class SearchResult:
    """What a search leaves for `derive`: method-specific state, metrics, and optionally trained weights.

    `state` holds what the final-architecture rule needs (logits, codes, gate probabilities, ...), as
    plain Python values or CPU tensors. `model` is set by methods whose search also trains the final
    network (ISTA-NAS one-stage, BSN): the CLI then saves it so `nas eval` works without retraining; it
    must be the module that `derive(result).build()` produces, with trained weights.
    """

    method: str
    state: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None


@runtime_checkable
class SearchMethod(Protocol):
    """A NAS or pruning method: `search` owns its loop (resumable through `run`), `derive` the final rule."""

    name: ClassVar[str]
    config_cls: ClassVar[type]
    # optional: the costs a search can be budgeted on (e.g. ("macs", "params")); the harness passes its
    # budget only to methods that declare it. Also optional: `sample_and_score(run_dir, task, n, seed)
    # -> [(Arch, supernet_accuracy)]` for the harness's Kendall-tau ranking check.

    def search(self, task: Task, config: Any, run: Run) -> SearchResult: ...

    def derive(self, result: SearchResult) -> Arch: ...
