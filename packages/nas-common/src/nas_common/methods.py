"""The method contract: the `SearchMethod` base class every method package subclasses, and what flows
through it (`Task`, `Budget`, `SearchResult`, `CliOption`).

A method is a `SearchMethod` subclass registered under the entry-point group `nas_common.methods`.
The `nas search` command, the Python API and the harness resolve its config, call `check(task, config)`
before anything is written, then `search(task, config, run)` and `derive(result)`, which applies the
paper's final-architecture rule. Everything the CLI and the harness need to know about a method is
declared here, so neither names a method:

    class ISTASearch(SearchMethod):
        name = "ista-nas"
        config_cls = ISTAConfig                      # presets "paper" (defaults) and "tiny"
        spaces = ("darts",)                          # the spaces its architectures live in
        budget_kinds = ()                            # costs it can be budgeted on; others are refused
        cli_options = (CliOption("--mode", key="mode", help="two-stage or one-stage"),)

        def check(self, task, config): super().check(task, config); ...  # refusals, before writing
        def search(self, task, config, run): ...     # resumable through run.save_state / run.resume
        def derive(self, result): ...                # -> Arch
        def sample_and_score(self, run_dir, task, n, seed): ...  # optional: the ranking hook
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .errors import BudgetError, ConfigError
from .registry import METHODS

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .arch import Arch
    from .context import SearchContext
    from .data import Dataset
    from .runs import Run


# ---- budgets --------------------------------------------------------------------------------------
class Budget:
    """Upper limits on named costs: `Budget(macs=40e6)`, `Budget(params=1e6)`, or any registered cost
    by key, `Budget(limits={"distributed:2": 6, "latency:cuda": 2e-3})` (see `nas_common.costs`).

    Immutable; keys are canonical (`latency` becomes `latency:cpu`). Values must be positive numbers.
    """

    __slots__ = ("_limits",)

    def __init__(self, macs: float | None = None, params: float | None = None,
                 limits: Mapping[str, float] | None = None) -> None:
        from .costs import parse_cost_key

        if limits is not None and not isinstance(limits, Mapping):
            raise BudgetError(f"Budget(limits=...) takes a mapping of cost names to numbers, "
                              f"e.g. {{'distributed:2': 6}}, got {type(limits).__name__}")
        raw: dict[str, Any] = dict(limits or {})
        for name, v in (("macs", macs), ("params", params)):
            if v is not None:
                if name in raw:
                    raise BudgetError(f"the {name} budget is given twice (keyword and limits)")
                raw[name] = v
        out: dict[str, float] = {}
        for key, value in raw.items():
            _, _, canonical = parse_cost_key(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                flag = f"--budget-{canonical}" if canonical in ("macs", "params") else f"--budget {canonical}=VALUE"
                raise BudgetError(f"budget {canonical}={value!r} must be a positive number (e.g. {flag})")
            if canonical in out:
                raise BudgetError(f"the {canonical} budget is given twice")
            out[canonical] = float(value)
        object.__setattr__(self, "_limits", MappingProxyType(dict(sorted(out.items()))))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Budget is immutable: build a new one")

    def __reduce__(self) -> tuple[Any, ...]:  # pickling (ranks, the harness's subprocesses)
        return (Budget.from_dict, (dict(self._limits),))

    @classmethod
    def parse(cls, items: list[str]) -> Budget:
        """A budget from `KEY=VALUE` strings (the CLI's `--budget distributed:2=6`)."""
        limits: dict[str, float] = {}
        for item in items:
            key, sep, value = item.partition("=")
            try:
                limits[key.strip()] = float(value)
            except ValueError:
                sep = ""
            if not sep:
                raise BudgetError(f"--budget {item!r} must be COST=VALUE, e.g. macs=40e6 or distributed:2=6")
        return cls(limits=limits)

    @property
    def limits(self) -> Mapping[str, float]:
        return self._limits

    @property
    def macs(self) -> float | None:
        return self._limits.get("macs")

    @property
    def params(self) -> float | None:
        return self._limits.get("params")

    @property
    def kinds(self) -> tuple[str, ...]:
        """The cost names budgeted (`distributed`, not `distributed:2`)."""
        return tuple(dict.fromkeys(k.partition(":")[0] for k in self._limits))

    def get(self, kind: str) -> tuple[str, float] | None:
        """(key, limit) of the budget on cost `kind` (`"distributed"` -> `("distributed:2", 6.0)`), or None."""
        for key, value in self._limits.items():
            if key.partition(":")[0] == kind:
                return key, value
        return None

    @property
    def is_set(self) -> bool:
        return bool(self._limits)

    def violations(self, costs: Mapping[str, float]) -> list[str]:
        """Human-readable reasons why `costs` break this budget (empty when within it)."""
        return [f"{k} {costs[k]:.4g} > budget {v:.4g}" for k, v in self._limits.items() if k in costs and costs[k] > v]

    def to_dict(self) -> dict[str, float]:
        return dict(self._limits)

    @classmethod
    def from_dict(cls, data: Mapping[str, float] | None) -> Budget:
        return cls(limits=dict(data or {}))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Budget) and dict(self._limits) == dict(other._limits)

    def __hash__(self) -> int:
        return hash(tuple(self._limits.items()))

    def __repr__(self) -> str:
        return f"Budget({', '.join(f'{k}={v:g}' for k, v in self._limits.items())})"


# ---- tasks and results ----------------------------------------------------------------------------
@dataclass
class Task:
    """What to search on: data, device, seed and budget. Built by the CLI, the Python API or the harness."""

    dataset: Dataset
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    budget: Budget = field(default_factory=Budget)

    def __post_init__(self) -> None:
        from .data import Dataset

        if not isinstance(self.dataset, Dataset):
            hint = (f" (load it first: Task(dataset=get_dataset({self.dataset!r})))"
                    if isinstance(self.dataset, str) else "")
            raise ConfigError(f"Task.dataset must be a nas_common Dataset, got {type(self.dataset).__name__}{hint}")
        if isinstance(self.device, str):
            self.device = torch.device(self.device)
        if not isinstance(self.device, torch.device):
            raise ConfigError(f"Task.device must be a torch.device or a name such as 'cpu', got {self.device!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**31:
            raise ConfigError(f"Task.seed must be an integer in [0, 2**31), got {self.seed!r}")
        if not isinstance(self.budget, Budget):
            raise ConfigError(f"Task.budget must be a Budget, e.g. Budget(macs=40e6), got {self.budget!r}")

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.dataset.input_shape

    @property
    def context(self) -> SearchContext:
        """The search context of this task's device: data-parallel under torchrun, a no-op otherwise."""
        from .context import SearchContext

        return SearchContext(self.device)


@dataclass
class SearchResult:
    """What a search leaves for `derive`: method-specific state, metrics, and optionally trained weights.

    `state` holds what the final-architecture rule needs (logits, codes, gate probabilities, ...), as
    plain Python values or CPU tensors; under torchrun it is the same on every rank (checked). `model`
    is set by methods whose search also trains the final network (ISTA-NAS one-stage, BSN,
    posterior-nas): it is saved as the run's model.pt, so `nas eval` works without retraining, and must
    be the module that `derive(result).build()` produces, with trained weights.
    """

    method: str
    state: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None
    arch: Arch | None = None  # set by run_search: the found architecture (derived, costed)
    run_dir: Path | None = None  # set by run_search: where the run was written


# ---- the method's own command-line options ----------------------------------------------------------
@dataclass(frozen=True)
class CliOption:
    """A flag of `nas search METHOD`: `--input-arch X` stands for `-o input_arch=X` (`key`), or for the
    overrides `to_overrides(X)` returns when one flag sets several config values."""

    flag: str
    help: str
    key: str | None = None
    metavar: str = "VALUE"
    to_overrides: Callable[[str], Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        if not self.flag.startswith("--"):
            raise ValueError(f"CliOption flag must start with '--', got {self.flag!r}")
        if (self.key is None) == (self.to_overrides is None):
            raise ValueError(f"CliOption {self.flag}: give exactly one of key and to_overrides")

    @property
    def dest(self) -> str:
        return "opt_" + self.flag[2:].replace("-", "_")

    def overrides(self, value: str) -> dict[str, Any]:
        return {self.key: value} if self.key is not None else dict(self.to_overrides(value))


# ---- the base class ---------------------------------------------------------------------------------
class SearchMethod:
    """A NAS or pruning method. Subclasses set the class attributes and implement `search` and `derive`.

    - `name`: the registry key (the entry point's name); `config_cls`: a `Config` dataclass whose
      defaults are the paper's, with presets `paper` and `tiny`.
    - `spaces`: the search spaces its architectures are in (shown by `nas list`).
    - `budget_kinds`: the cost names (`macs`, `params`, `distributed`, ...) it can be budgeted on; a
      budget on any other cost is refused by `check`.
    - `cli_options`: its own `nas search` flags.
    - `host_sync_allowlist`: ops the no-host-sync conformance test tolerates inside a search step, each
      with the reason (normally empty).
    - `best_metric`, `best_mode`: the validation metric (a `PHASE/QUANTITY` name the search logs through
      `run.log`, e.g. "valid/top1") by which checkpoints/best.pt is kept beside last.pt, and whether
      larger ("max") or smaller ("min") is better; None keeps no best.pt.
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type] = object
    spaces: ClassVar[tuple[str, ...]] = ()
    budget_kinds: ClassVar[tuple[str, ...]] = ()
    cli_options: ClassVar[tuple[CliOption, ...]] = ()
    host_sync_allowlist: ClassVar[Mapping[str, str]] = MappingProxyType({})
    best_metric: ClassVar[str | None] = None
    best_mode: ClassVar[str] = "max"

    # -- the contract ------------------------------------------------------------------------------
    def check(self, task: Task, config: Any) -> None:
        """Every refusal the method can make before it searches (infeasible budget, missing inputs, a
        budget kind it does not take), as a NASError. `run_search` calls it before the run directory
        exists, so a refusal leaves nothing behind. Subclasses extend it and call `super().check`."""
        refused = [k for k in task.budget.kinds if k not in self.budget_kinds]
        if refused:
            from .registry import get_method, list_methods

            takers = []
            for m in list_methods():
                try:
                    if refused[0] in get_method(m).budget_kinds:
                        takers.append(m)
                except Exception:  # a broken method package: leave it out of the hint
                    continue
            takes = (f"it takes a budget on {', '.join(self.budget_kinds)}" if self.budget_kinds
                     else "it takes no budget")
            others = f"; methods with a {refused[0]} budget: {', '.join(takers)}" if takers else ""
            raise BudgetError(f"{self.name} cannot honour a {', '.join(refused)} budget: {takes}{others}")

    def search(self, task: Task, config: Any, run: Run) -> SearchResult:
        raise NotImplementedError(f"{type(self).__name__}.search")

    def derive(self, result: SearchResult) -> Arch:
        raise NotImplementedError(f"{type(self).__name__}.derive")

    def sample_and_score(self, run_dir: str | Path, task: Task, n: int, seed: int) -> list[tuple[Arch, float]]:
        """Optional ranking hook: `n` distinct architectures from the finished search in `run_dir`, each
        with its accuracy under the search's shared weights on held-out data (the harness's Kendall-tau
        check against stand-alone training)."""
        raise NotImplementedError(f"{self.name} has no ranking hook")

    # -- what the contract derives ------------------------------------------------------------------
    @classmethod
    def ranks(cls) -> bool:
        """Whether the method implements the ranking hook `sample_and_score`."""
        return cls.sample_and_score is not SearchMethod.sample_and_score

    @classmethod
    def validate_class(cls) -> None:
        """Raise TypeError when a subclass leaves out a declaration the CLI and the harness rely on."""
        problems = []
        if not isinstance(cls.name, str) or not cls.name:
            problems.append("set `name` (the entry point's name)")
        if not isinstance(cls.config_cls, type) or cls.config_cls is object:
            problems.append("set `config_cls` (a Config dataclass)")
        for attr in ("spaces", "budget_kinds", "cli_options"):
            if not isinstance(getattr(cls, attr), tuple):
                problems.append(f"`{attr}` must be a tuple")
        if cls.search is SearchMethod.search or cls.derive is SearchMethod.derive:
            problems.append("implement `search` and `derive`")
        if problems:
            raise TypeError(f"{cls.__module__}.{cls.__qualname__}: " + "; ".join(problems))


def _validate_method(cls: Any) -> None:
    """What the method registry accepts: a complete SearchMethod subclass (TypeError otherwise)."""
    if not (isinstance(cls, type) and issubclass(cls, SearchMethod)):
        raise TypeError(f"a method must be a nas_common.SearchMethod subclass, got {cls!r}")
    cls.validate_class()


METHODS.validate = _validate_method

__all__ = ["Budget", "CliOption", "SearchMethod", "SearchResult", "Task"]
