"""Run one search end to end: the function behind `nas search`, the harness and the conformance tests.

    result, arch = run_search("ista-nas", task, preset="tiny", out="runs/x")

It resolves the method's config, opens the run directory, calls `search` then `derive`, counts the
found architecture's costs, checks the budget (an over-budget result is reported, never silently
accepted), and writes arch.json, result.json and, when the search trained the final network, model.pt.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from .arch import Arch
from .config import config_to_dict, resolve_config
from .methods import SearchResult, Task
from .registry import get_method, method_version
from .runs import Run, provenance, seed_everything


def method_config(method: str | type, preset: str | None = "paper", file: Any = None,
                  overrides: Iterable[str] | Mapping[str, Any] = ()) -> Any:
    cls = get_method(method) if isinstance(method, str) else method
    return resolve_config(cls.config_cls, preset=preset, file=file, overrides=overrides)


def run_search(method: str | type, task: Task, *, out: str | Path, preset: str | None = "paper",
               config_file: Any = None, overrides: Iterable[str] | Mapping[str, Any] = (),
               resume: bool = False, overwrite: bool = False, interrupt_after: int | None = None,
               progress: bool = True) -> tuple[SearchResult, Arch]:
    cls = get_method(method) if isinstance(method, str) else method
    config = resolve_config(cls.config_cls, preset=preset, file=config_file, overrides=overrides)
    record = {
        "kind": "search", "method": cls.name, "preset": preset or "", "dataset": task.dataset.name,
        "seed": task.seed, "budget": task.budget.to_dict(), "config": config_to_dict(config),
    }
    run = Run.create(out, record, resume=resume, overwrite=overwrite, interrupt_after=interrupt_after,
                     progress=progress)
    seed_everything(task.seed)
    t0 = time.time()
    try:
        result = cls().search(task, config, run)
        search_time = time.time() - t0
        arch = cls().derive(result)
        arch = finish_arch(arch, cls.name, task)
        run.save_arch(arch)
        if result.model is not None:
            run.save_model(result.model, arch)
        over = task.budget.violations(arch.costs)
        metrics = {**result.metrics, "search_time_s": search_time}
        run.write_result({"kind": "search", "method": cls.name, "arch": arch.to_dict(), "costs": arch.costs,
                          "budget": task.budget.to_dict(), "over_budget": over, "metrics": metrics,
                          "method_version": method_version(cls.name)}, device=task.device, seed=task.seed)
        result.metrics = metrics
        return result, arch
    finally:
        run.close()


def finish_arch(arch: Arch, method: str, task: Task) -> Arch:
    """Fill in what every found arch carries: counted costs, the method, provenance."""
    if not arch.costs or "macs" not in arch.costs or "params" not in arch.costs:
        arch = arch.with_costs()
    prov = {**provenance(task.device, task.seed), "dataset": task.dataset.name, **(arch.provenance or {})}
    return replace(arch, method=arch.method or method, provenance=prov)
