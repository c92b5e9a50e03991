"""nas_common: the shared core of the NAS-under-budget packages.

Datasets, candidate ops, search spaces, cost functions, trainers, architecture files, the method
registry and the `nas` command. One-call entry points: `nas_common.search(method, dataset=...,
budget=...)` and `nas_common.train(arch, dataset=...)`. Method packages (nat-nas, bsn-nas, tas-nas,
ista-nas, posterior-nas) build on it and register through the entry-point group `nas_common.methods`.
"""
from importlib import metadata as _metadata

# importing registers ops, spaces and costs; search and train are callable modules:
# nas_common.search(method, dataset=..., budget=...), nas_common.train(arch, dataset=...)
from . import (
    costs,
    dist,
    errors,
    oneshot,
    ops,
    registry,
    search,
    spaces,
    train,
)
from .arch import Arch, build_model, get_arch, list_archs, load_arch, register_arch, save_arch
from .config import Config, list_presets, resolve_config
from .context import SearchContext
from .costs import count_costs, count_macs, count_params
from .data import Dataset, Split, get_dataset, list_datasets, make_loader
from .errors import ArchFileError, BudgetError, ConfigError, DataError, NASError, RunError
from .methods import Budget, CliOption, SearchMethod, SearchResult, Task
from .registry import get_method, list_methods, register_method
from .runs import Resumed, Run, RunInterrupted, load_model, seed_everything
from .spaces import get_space, list_spaces

try:
    __version__ = _metadata.version("nas-common")
except _metadata.PackageNotFoundError:  # pragma: no cover
    __version__ = "0.0.0"


__all__ = [
    "Arch", "ArchFileError", "Budget", "BudgetError", "CliOption", "Config", "ConfigError", "DataError", "Dataset",
    "NASError", "Resumed", "Run", "RunError", "RunInterrupted", "SearchContext", "SearchMethod", "SearchResult",
    "Split", "Task",
    "build_model", "count_costs", "count_macs", "count_params", "get_arch", "get_dataset", "get_method",
    "get_space", "list_archs", "list_datasets", "list_methods", "list_presets", "list_spaces", "load_arch",
    "load_model", "make_loader", "register_arch", "register_method", "resolve_config", "save_arch",
    "seed_everything", "costs", "dist", "errors", "oneshot", "ops", "registry", "search", "spaces", "train",
]
