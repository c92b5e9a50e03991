"""The cross-method benchmark: every registered method on the same data, seeds and budget; every found
architecture retrained with one shared recipe next to reference and random baselines; one table.

Results are appended to DIR/results.jsonl, one line per job (method x seed x phase); a job whose line is
already there is skipped, so a killed harness resumes where it stopped.
"""
from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from .presets import PRESETS, BenchPreset

RESULTS = "results.jsonl"


def read_rows(out: Path) -> list[dict[str, Any]]:
    p = out / RESULTS
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: that job simply runs again
                continue
    return rows


def append_row(out: Path, row: dict[str, Any]) -> None:
    with open(out / RESULTS, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()


def discover_methods(names: str) -> list[str]:
    """Methods come only from the registry (entry points), never from a hand-written list."""
    from nas_common.errors import ConfigError
    from nas_common.registry import list_methods

    installed = list_methods()
    if names in ("all", ""):
        return installed
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in installed]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}: installed: {', '.join(installed) or 'none'}")
    return wanted


class Harness:
    def __init__(self, preset: str | BenchPreset, out: str | Path, methods: str = "all",
                 seeds: tuple[int, ...] = (0,), dataset: str | None = None, data_dir: str | None = None,
                 download: bool = False, budget_macs: float | None = None, budget_params: float | None = None,
                 device: str | None = None, launcher: str = "local", jobs: int = 1, quiet: bool = False,
                 nproc_retrain: int = 1) -> None:
        from nas_common.errors import ConfigError

        if isinstance(preset, str):
            if preset not in PRESETS:
                raise ConfigError(f"unknown harness preset {preset!r}: valid: {', '.join(PRESETS)}")
            preset = PRESETS[preset]
        self.preset = preset
        self.out = Path(out)
        self.methods = discover_methods(methods)
        self.seeds = tuple(seeds)
        self.dataset = dataset or preset.dataset
        self.data_dir, self.download = data_dir, download
        self.budget_macs = budget_macs if budget_macs is not None else preset.budget_macs
        self.budget_params = budget_params
        self.device = device
        self.launcher_name, self.jobs = launcher, max(1, jobs)
        self.nproc_retrain = max(1, nproc_retrain)
        self.quiet = quiet
        self.rows = read_rows(self.out)
        self.done = {r["key"] for r in self.rows}
        self.ran: list[dict[str, Any]] = []

    # ---- planning -----------------------------------------------------------------------------------
    def _base(self, kind: str, key: str, seed: int) -> dict[str, Any]:
        import os

        threads = max(1, (os.cpu_count() or 1) // self.jobs) if self.launcher_name == "local" else None
        return {"kind": kind, "key": key, "seed": seed, "dataset": self.dataset, "data_dir": self.data_dir,
                "download": self.download, "n_train": self.preset.n_train, "n_test": self.preset.n_test,
                "device": self.device, "threads": threads, "preset_name": self.preset.name,
                "out": str(self.out / "jobs" / key.replace("/", "_"))}

    def _train(self, key: str, seed: int, arch: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {**self._base("train", key, seed), "arch": arch, "net": self.preset.net,
                "recipe_preset": self.preset.retrain_preset, "recipe_overrides": self.preset.retrain_overrides,
                "nproc": self.nproc_retrain, **extra}

    def search_jobs(self) -> list[dict[str, Any]]:
        """One search per method and seed; the budget goes to the methods that declare they take it."""
        from nas_common.registry import get_method

        jobs = []
        for m in self.methods:
            try:
                kinds = tuple(getattr(get_method(m), "budget_kinds", ()))
            except Exception:  # noqa: BLE001 - a broken package fails in its own job, recorded there
                kinds = ()
            for s in self.seeds:
                jobs.append({**self._base("search", f"search/{m}/s{s}", s), "method": m,
                             "preset": self.preset.method_preset,
                             "overrides": self.preset.method_overrides.get(m, {}),
                             "budget_macs": self.budget_macs if "macs" in kinds else None,
                             "budget_params": self.budget_params if "params" in kinds else None})
        return jobs

    def baseline_jobs(self) -> list[dict[str, Any]]:
        from nas_common.arch import get_arch
        from nas_common.registry import ARCHS

        jobs = []
        for name in self.preset.baselines:
            if name not in ARCHS:
                continue
            for s in self.seeds:
                jobs.append(self._train(f"baseline/{name}/s{s}", s, get_arch(name).to_dict(), label=name))
        return jobs

    def followup_jobs(self) -> list[dict[str, Any]]:
        """Retrain every found arch; random archs of its space at about its MACs; the ranking check."""
        jobs = []
        for r in self.rows:
            if r.get("phase") != "search" or not r.get("ok"):
                continue
            m, s = r["method"], r["seed"]
            jobs.append(self._train(f"retrain/{m}/s{s}", s, r["arch"], method=m, label=m))
            for i in range(self.preset.random_per_space):
                arch = random_arch_like(r["arch"], self.preset.net, seed=1000 * s + i)
                if arch is not None:
                    jobs.append(self._train(f"random/{m}-{i}/s{s}", s, arch, method=m,
                                            label=f"random {r['arch']['space']} (~{m})"))
            if self.preset.rank_samples > 0:
                jobs.append({**self._base("rank", f"rank/{m}/s{s}", s), "method": m,
                             "search_dir": str(Path(r["config"]["out"])), "samples": self.preset.rank_samples,
                             "net": self.preset.net, "recipe_preset": self.preset.retrain_preset,
                             "recipe_overrides": self.preset.rank_overrides})
        return jobs

    # ---- running --------------------------------------------------------------------------------------
    def _on_done(self, job: dict[str, Any], res: dict[str, Any]) -> None:
        from nas_common.runs import provenance

        phase = job["key"].split("/")[0]
        row = {"key": job["key"], "phase": phase, "method": job.get("method") or job.get("label"),
               "label": job.get("label") or job.get("method"), "seed": job["seed"], "dataset": job["dataset"],
               "preset": self.preset.name, **{k: v for k, v in res.items() if k != "traceback"},
               "config": job, "provenance": provenance(res.get("device"), job["seed"]),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if not res.get("ok") and res.get("traceback"):
            row["traceback_tail"] = res["traceback"][-2000:]
        append_row(self.out, row)
        self.rows.append(row)
        self.ran.append(row)
        self.done.add(job["key"])
        if not self.quiet:
            what = (f"{res.get('test_acc', 0) or 0:.3f} acc" if "test_acc" in res else
                    f"{(res.get('macs') or 0) / 1e6:.1f}M MACs" if phase == "search" else
                    f"tau {res.get('kendall_tau')}")
            status = what if res.get("ok") else f"FAILED: {res.get('error')}"
            print(f"  [{len(self.done)}] {job['key']:32s} {res.get('job_wall_s', 0):7.1f}s  {status}", flush=True)

    def _launch(self, jobs: list[dict[str, Any]]) -> None:
        from .launchers import make_launcher

        todo = [j for j in jobs if j["key"] not in self.done]
        if not todo:
            return
        make_launcher(self.launcher_name, self.jobs, self.out).run(todo, self._on_done)

    def run(self) -> dict[str, Any]:
        t0 = time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        if not self.quiet:
            print(f"harness: preset {self.preset.name}, dataset {self.dataset}, methods "
                  f"{', '.join(self.methods) or 'none'}, seeds {list(self.seeds)}, launcher {self.launcher_name} "
                  f"x{self.jobs}, out {self.out} ({len(self.done)} rows already done)", flush=True)
        self._launch(self.search_jobs() + self.baseline_jobs())
        self._launch(self.followup_jobs())
        wall = time.time() - t0
        from .report import write_report

        summary = write_report(self.out, self.rows)
        summary["wall_s"] = wall
        # the harness's own cost: everything but the searches and trainings it ran (serial runs only)
        inner = sum(job_inner_time(r) for r in self.ran)
        summary["jobs_run"] = len(self.ran)
        summary["overhead_s"] = wall - inner if self.jobs == 1 and self.ran else None
        summary["overhead_frac"] = (wall - inner) / wall if self.jobs == 1 and self.ran and wall > 0 else None
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def job_inner_time(row: dict[str, Any]) -> float:
    """Seconds a job spent searching or training (what the harness does not add)."""
    if row.get("phase") == "search":
        return float(row.get("search_time_s") or 0.0)
    if row.get("phase") == "rank":
        return float(row.get("job_wall_s") or 0.0)
    return float(row.get("retrain_time_s") or 0.0)


def random_arch_like(arch_dict: dict[str, Any], net: dict[str, dict[str, Any]], seed: int,
                     tries: int = 12) -> dict[str, Any] | None:
    """A random arch of the same space whose MACs (at the recipe's size) are closest to `arch_dict`'s."""
    from nas_common.arch import Arch
    from nas_common.registry import SPACES

    from .jobs import sized_for_recipe

    target = sized_for_recipe(arch_dict, net)
    space = SPACES.get(target.space)
    rng = random.Random(seed)
    best, best_gap = None, float("inf")
    for _ in range(tries):
        try:
            spec = space.random_spec(rng, dict(target.net))
        except NotImplementedError:
            return None
        cand = Arch(target.space, space.validate_spec(spec), dict(target.net)).with_costs()
        gap = abs(cand.costs["macs"] - target.costs["macs"]) / max(1.0, target.costs["macs"])
        if gap < best_gap:
            best, best_gap = cand, gap
        if gap < 0.05:
            break
    return best.to_dict() if best is not None else None


def mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


if __name__ == "__main__":  # pragma: no cover
    from .__main__ import main

    sys.exit(main())
