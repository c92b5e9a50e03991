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
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from . import dist
from .arch import Arch
from .config import config_to_dict, resolve_config
from .costs import count_costs, measure_cost
from .errors import RunError
from .methods import SearchMethod, SearchResult, Task
from .registry import get_method, method_version
from .runs import Run, provenance, seed_everything


def method_config(method: str | type[SearchMethod], preset: str | None = "paper", file: Any = None,
                  overrides: Iterable[str] | Mapping[str, Any] = ()) -> Any:
    """The method's resolved config: the paper's defaults, then `preset`, `file` and `overrides`."""
    cls = get_method(method) if isinstance(method, str) else method
    return resolve_config(cls.config_cls, preset=preset, file=file, overrides=overrides)


def search_record(cls: type[SearchMethod], task: Task, config: Any, preset: str | None) -> dict[str, Any]:
    """What config.toml records about a search (and `--resume` compares)."""
    return {"kind": "search", "method": cls.name, "preset": preset or "", "dataset": task.dataset.name,
            "seed": task.seed, "budget": task.budget.to_dict(), "config": config_to_dict(config)}


def run_search(method: str | type[SearchMethod], task: Task, *, out: str | Path, preset: str | None = "paper",
               config_file: Any = None, overrides: Iterable[str] | Mapping[str, Any] = (),
               resume: bool = False, overwrite: bool = False, interrupt_after: int | None = None,
               progress: bool = True) -> tuple[SearchResult, Arch]:
    cls = get_method(method) if isinstance(method, str) else method
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
        return result, arch
    finally:
        run.close()


def finish_arch(arch: Arch, method: str, task: Task) -> Arch:
    """Fill in what every found arch carries: counted costs (MACs, params and every budgeted cost),
    the method, provenance."""
    costs = dict(arch.costs)
    missing = [k for k in task.budget.limits if k not in costs]
    if "macs" not in costs or "params" not in costs or missing:
        model = arch.build()
        shape = tuple(arch.net["input"])
        costs = {**count_costs(model, shape), **costs}
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


__all__ = ["finish_arch", "method_config", "run_search", "search_record", "state_digest"]
