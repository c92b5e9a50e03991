"""Run one search end to end: the function behind `nas search`, the Python API, the harness and the
conformance tests.

    result, arch = run_search("ista-nas", task, preset="tiny", out="runs/x")

Order: resolve the method's config; check the output directory and call the method's `check(task,
config)`, so every refusal comes before anything is written; create the run directory; `search`;
`derive` (on rank 0, broadcast to the others); count the found architecture's costs (every budgeted
one too); check the budget (an over-budget result is reported, never silently accepted); write
arch.json, result.json and, when the search trained the final network, model.pt. Under torchrun every
rank runs this; their search states must agree (checked: a digest per rank goes into result.json).
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
import types
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from . import dist
from .arch import Arch
from .config import config_to_dict, resolve_config
from .costs import count_costs, measure_cost
from .errors import ConfigError, RunError
from .methods import SearchMethod, SearchResult, Task
from .registry import get_method, list_methods, method_version
from .runs import Run, check_keep, provenance, seed_everything


def _method_class(method: Any) -> type[SearchMethod]:
    if isinstance(method, str):
        return get_method(method)
    if isinstance(method, type) and issubclass(method, SearchMethod):
        return method
    raise ConfigError(f"a method is a name (one of {', '.join(list_methods()) or 'none installed'}) or a "
                      f"SearchMethod subclass, got {method!r}")


def method_config(method: str | type[SearchMethod], preset: str | None = "paper", file: Any = None,
                  overrides: Iterable[str] | Mapping[str, Any] = ()) -> Any:
    """The method's resolved config: the paper's defaults, then `preset`, `file` and `overrides`."""
    cls = _method_class(method)
    return resolve_config(cls.config_cls, preset=preset, file=file, overrides=overrides)


def search_record(cls: type[SearchMethod], task: Task, config: Any, preset: str | None) -> dict[str, Any]:
    """What config.toml records about a search (and `--resume` compares)."""
    return {"kind": "search", "method": cls.name, "preset": preset or "", "dataset": task.dataset.name,
            "seed": task.seed, "budget": task.budget.to_dict(), "config": config_to_dict(config)}


def run_search(method: str | type[SearchMethod], task: Task, *, out: str | Path, preset: str | None = "paper",
               config_file: Any = None, overrides: Iterable[str] | Mapping[str, Any] = (),
               resume: bool = False, overwrite: bool = False, interrupt_after: int | None = None,
               progress: bool = True, keep_best: int = 1) -> tuple[SearchResult, Arch]:
    """Search with `method` on `task` into the run directory `out` (see the module docstring); returns
    the method's SearchResult and the found (derived, costed) Arch. `keep_best`: checkpoints/best.pt
    by the method's `best_metric`, and with keep_best > 1 that many best epochs' checkpoints."""
    from .config import check_record_file

    cls = _method_class(method)
    if not isinstance(task, Task):
        hint = " (wrap it: Task(dataset=ds))" if type(task).__name__ == "Dataset" else ""
        raise ConfigError(f"run_search takes a Task, got {type(task).__name__}{hint}")
    check_keep(keep_best)
    check_record_file(config_file, kind="search", method=cls.name)
    config = resolve_config(cls.config_cls, preset=preset, file=config_file, overrides=overrides)
    ctx = task.context  # joins the process group when launched by torchrun
    if ctx.device != task.device:
        task = replace(task, device=ctx.device)
    record = search_record(cls, task, config, preset)
    searcher = cls()
    Run.create(out, record, resume=resume, overwrite=overwrite, dry_run=True)  # the output's refusals
    searcher.check(task, config)  # the method's refusals, before anything is written
    run = Run.create(out, record, resume=resume, overwrite=overwrite, interrupt_after=interrupt_after,
                     progress=progress)
    run.track_best(cls.best_metric, cls.best_mode, keep=keep_best)
    seed_everything(task.seed)
    t0 = time.time()
    try:
        result = searcher.search(task, config, run)
        search_time = time.time() - t0
        digests = dist.gather_objects(state_digest(result.state))
        if len(set(digests)) > 1:
            raise RunError(f"the ranks ended the search in different states ({digests}): a bug in the data-"
                           f"parallel search of {cls.name}; please report it with the command line")
        arch = ctx.decide(lambda: finish_arch(searcher.derive(result), cls.name, task))
        arch_digests = dist.gather_objects(arch.digest)
        run.save_arch(arch)
        if result.model is not None:
            run.save_model(result.model, arch)
        over = task.budget.violations(arch.costs)
        metrics = {**result.metrics, "search_time_s": search_time}
        run.write_result({"kind": "search", "method": cls.name, "arch": arch.to_dict(), "costs": arch.costs,
                          "budget": task.budget.to_dict(), "over_budget": over, "metrics": metrics,
                          "config": result.config or config_to_dict(config),
                          "trained_model": result.model is not None,
                          "method_version": method_version(cls.name), "rank_state_digests": digests,
                          "rank_arch_digests": arch_digests}, device=task.device, seed=task.seed)
        result.metrics = metrics
        result.arch, result.run_dir = arch, Path(out)
        return result, arch
    finally:
        run.close()


def finish_arch(arch: Arch, method: str, task: Task) -> Arch:
    """Fill in what every found arch carries: counted costs (MACs, params and every budgeted cost),
    the method, provenance."""
    costs = dict(arch.costs)
    if "macs" not in costs or "params" not in costs:
        costs = {**count_costs(arch), **costs}  # on the meta device: exact, nothing allocated
    missing = [k for k in task.budget.limits if k not in costs]
    if missing:  # memory, latency, ...: measured on the real network
        model = arch.build()
        shape = tuple(arch.net["input"])
        for key in missing:
            costs[key] = measure_cost(model, key, shape, device=task.device)
    prov = {**provenance(task.device, task.seed), "dataset": task.dataset.name, **(arch.provenance or {})}
    return replace(arch, costs=costs, method=arch.method or method, provenance=prov)


def state_digest(state: Mapping[str, Any]) -> str:
    """A bit-exact hash of a search state (tensors by value, other values by their JSON): equal
    digests on every rank mean the ranks ended the search in the same state."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(_digest_value(state[key]).encode())
    return h.hexdigest()[:16]


def _digest_value(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return dist.tensor_digest([("", v)])
    if isinstance(v, Mapping):
        return "{" + ",".join(f"{k}:{_digest_value(x)}" for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_digest_value(x) for x in v) + "]"
    return json.dumps(v, sort_keys=True, default=repr)


def default_out(name: str) -> Path:
    """runs/NAME-YYYYmmdd-HHMMSS (a new directory per call of the one-call API)."""
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def search(method: str | type[SearchMethod], dataset: Any = "cifar10-mini", *, budget: Any = None,
           out: str | Path | None = None, preset: str | None = "paper", seed: int = 0, device: Any = None,
           overrides: Iterable[str] | Mapping[str, Any] = (), config_file: Any = None, resume: bool = False,
           overwrite: bool = False, progress: bool = True, data_dir: str | None = None, download: bool = False,
           keep_best: int = 1) -> SearchResult:
    """Search an architecture in one call: `nas_common.search("tas", dataset="cifar10-mini",
    budget=Budget(macs=20e6), preset="tiny")`. `dataset` is a name (see `list_datasets()`) or a Dataset;
    `budget` a Budget, a mapping such as {"macs": 20e6}, or None; `out` defaults to runs/METHOD-TIME.
    Returns the SearchResult with `.arch` (the found Arch), `.metrics`, `.model` and `.run_dir`; what
    `run_search` writes is in `.run_dir` (`nas train RUN_DIR/arch.json` retrains it)."""
    from .data import Dataset, get_dataset
    from .device import resolve_device
    from .methods import Budget

    cls = _method_class(method)
    if budget is None:
        budget = Budget()
    elif isinstance(budget, Mapping):
        budget = Budget(limits=budget)
    elif not isinstance(budget, Budget):
        raise ConfigError(f"budget must be a Budget (e.g. Budget(macs=20e6)), a mapping such as {{'macs': 20e6}} "
                          f"or None, got {budget!r}")
    ds = dataset if isinstance(dataset, Dataset) else get_dataset(dataset, data_dir=data_dir, download=download)
    task = Task(dataset=ds, device=resolve_device(device), seed=seed, budget=budget)
    result, _ = run_search(cls, task, out=out if out is not None else default_out(cls.name), preset=preset,
                           config_file=config_file, overrides=overrides, resume=resume, overwrite=overwrite,
                           progress=progress, keep_best=keep_best)
    return result


class _CallableModule(types.ModuleType):
    """This module, callable: `nas_common.search(...)` is `nas_common.search.search(...)`."""

    def __call__(self, *args: Any, **kwargs: Any) -> SearchResult:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["default_out", "finish_arch", "method_config", "run_search", "search", "search_record", "state_digest"]
