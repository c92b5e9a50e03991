"""The cross-method benchmark: every registered method on the same data, seeds and budget; every found
architecture retrained with one shared recipe next to baselines at the same cost (random architectures of
its space, the space's reference network scaled to its MACs, random search at its search time); the
statistics over seeds in one report.

Results are appended to DIR/results.jsonl, one line per job (method x seed x phase); a job whose line is
already there is skipped, so a killed harness resumes where it stopped. Every row carries the run's digest
(preset fields, dataset, budgets), and a DIR holding rows of another protocol is refused before anything is
written, so that no table mixes two protocols. Before any job runs the harness
checks its own dependencies and prints an estimate of the wall time; after each job, a progress line.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .presets import PRESETS, BenchPreset
from .results import RESULTS, append_row, read_rows

__all__ = ["RESULTS", "Harness", "append_row", "check_dependencies", "discover_methods", "read_rows"]

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


REQUIRED = {"scipy": "the statistics (scipy.stats)", "matplotlib": "the Pareto plot"}
INSTALL_HINT = 'pip install "nas-common[bench]"'


def check_dependencies(modules: dict[str, str] | None = None) -> None:
    """Raise a one-line ConfigError naming what to install when a module the harness needs is missing.

    Called before any job runs, so a missing scipy does not surface after an hour of training.
    """
    import importlib

    from nas_common.errors import ConfigError

    missing = []
    for name in (modules or REQUIRED):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        what = ", ".join(f"{m} ({(modules or REQUIRED)[m]})" for m in missing)
        raise ConfigError(f"the harness needs {what}: {INSTALL_HINT}")


def _label(phase: str, space: str, method: str) -> str:
    return {"random": f"random {space} (~{method})", "reference": f"reference {space} (~{method})",
            "rs": f"random search {space} (~{method})"}[phase]


def _tau(tau: Any) -> str:
    """The progress line's Kendall tau: two decimals, or why there is none."""
    return f"tau {tau:+.2f}" if isinstance(tau, (int, float)) else f"tau {tau}"


class Harness:
    def __init__(self, preset: str | BenchPreset, out: str | Path, methods: str = "all",
                 seeds: tuple[int, ...] | None = None, dataset: str | None = None, data_dir: str | None = None,
                 download: bool = False, budget_macs: float | None = None, budget_params: float | None = None,
                 device: str | None = None, launcher: str = "local", jobs: int = 1, quiet: bool = False,
                 nproc_retrain: int = 1, calibrate_from: str | Path | None = None) -> None:
        from nas_common.errors import ConfigError

        if isinstance(preset, str):
            if preset not in PRESETS:
                raise ConfigError(f"unknown harness preset {preset!r}: valid: {', '.join(PRESETS)}")
            preset = PRESETS[preset]
        self.preset = preset
        self.out = Path(out)
        self.methods = discover_methods(methods)
        self.seeds = tuple(seeds) if seeds else tuple(preset.seeds)
        self.dataset = dataset or preset.dataset
        self.data_dir, self.download = data_dir, download
        self.budget_macs = budget_macs if budget_macs is not None else preset.budget_macs
        self.budget_params = budget_params
        self.device = device
        self.launcher_name, self.jobs = launcher, max(1, jobs)
        self.nproc_retrain = max(1, nproc_retrain)
        self.quiet = quiet
        self.rows = read_rows(self.out)
        self.digest = run_digest(preset, self.dataset, self.budget_macs, self.budget_params)
        self._refuse_foreign_rows()
        self.done = {r["key"] for r in self.rows if r.get("ok")}  # a failed job runs again on resume
        self.ran: list[dict[str, Any]] = []
        self.calibrate_from = calibrate_from
        self._planned_total = 0
        self._predicted: dict[str, float] = {}
        self._t0 = time.time()

    def _refuse_foreign_rows(self) -> None:
        """Refuse (before anything is written) an --out whose rows another protocol made: a different
        preset, dataset or budget, or another version of this preset (its digest). Resuming there would
        skip jobs by key and mix rows of two protocols in one table. Rows older than the digest are
        checked on preset and dataset only."""
        from nas_common.errors import ConfigError

        foreign = [r for r in self.rows if r.get("preset") != self.preset.name or r.get("dataset") != self.dataset
                   or (r.get("run_digest") and r["run_digest"] != self.digest)]
        if not foreign:
            return
        r = foreign[0]
        made = f"preset {r.get('preset')!r} on {r.get('dataset')!r}" + (
            f", digest {r['run_digest']}" if r.get("run_digest") else "")
        raise ConfigError(
            f"{self.out} holds {len(foreign)} result row(s) made by another protocol ({made}; e.g. {r.get('key')}); "
            f"this run is preset {self.preset.name!r} on {self.dataset!r}, digest {self.digest} (preset fields, "
            f"dataset and budgets). Resuming would mix the two in one table: give another --out, or rerun with "
            f"the preset, dataset and budgets that made those rows")

    # ---- planning -----------------------------------------------------------------------------------
    def _base(self, kind: str, key: str, seed: int) -> dict[str, Any]:
        import os

        threads = max(1, (os.cpu_count() or 1) // self.jobs) if self.launcher_name == "local" else None
        return {"kind": kind, "key": key, "seed": seed, "dataset": self.dataset, "data_dir": self.data_dir,
                "download": self.download, "n_train": self.preset.n_train, "n_test": self.preset.n_test,
                "val_fraction": self.preset.val_fraction, "split_seed": self.preset.split_seed,
                "device": self.device, "threads": threads, "preset_name": self.preset.name,
                "out": str(self.out / "jobs" / key.replace("/", "_"))}

    def _train(self, key: str, seed: int, arch: dict[str, Any], kind: str = "train", **extra: Any) -> dict[str, Any]:
        return {**self._base(kind, key, seed), "arch": arch, "net": self.preset.net,
                "recipe_preset": self.preset.retrain_preset, "recipe_overrides": self.preset.retrain_overrides,
                "nproc": self.nproc_retrain, **extra}

    def search_jobs(self) -> list[dict[str, Any]]:
        """One search per method and seed; the budget goes to the methods that declare they take it."""
        from nas_common.registry import get_method

        jobs = []
        for m in self.methods:
            try:
                kinds = tuple(get_method(m).budget_kinds)
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

    def _rank_seeds(self) -> tuple[int, ...]:
        n = self.preset.rank_seeds
        return self.seeds if n is None else self.seeds[:n]

    def followups_of(self, m: str, s: int, arch: dict[str, Any], search_time_s: float, search_dir: str
                     ) -> list[dict[str, Any]]:
        """Everything that needs method m's network of seed s: its retrain, its cost-matched baselines
        (random archs, the scaled reference, random search at its search time), the ranking check."""
        p = self.preset
        space = arch["space"]
        match = {"target": arch, "tolerance": p.mac_tolerance, "method": m}
        jobs = [self._train(f"retrain/{m}/s{s}", s, arch, method=m, label=m)]
        for i in range(p.random_per_space):
            jobs.append(self._train(f"random/{m}-{i}/s{s}", s, arch, kind="random", match_seed=1000 * s + i,
                                    label=_label("random", space, m), **match))
        if p.reference:
            jobs.append(self._train(f"reference/{m}/s{s}", s, arch, kind="reference",
                                    reference=p.references.get(space), label=_label("reference", space, m),
                                    **match))
        if p.random_search:
            jobs.append(self._train(f"rs/{m}/s{s}", s, arch, kind="rs", match_seed=1000 * s + 500,
                                    time_budget_s=float(search_time_s), rs_recipe_preset=p.rs_recipe_preset,
                                    rs_recipe_overrides=p.rs_overrides, rs_n_train=p.rs_n_train,
                                    label=_label("rs", space, m), **match))
        if p.rank_samples > 0 and s in self._rank_seeds():
            jobs.append({**self._base("rank", f"rank/{m}/s{s}", s), "method": m, "search_dir": search_dir,
                         "samples": p.rank_samples, "net": p.net, "recipe_preset": p.retrain_preset,
                         "recipe_overrides": p.rank_overrides})
        return jobs

    def followup_jobs(self) -> list[dict[str, Any]]:
        """The follow-ups of every finished search of this run's methods and seeds (see `followups_of`);
        searches of other methods or seeds in the same results (an earlier `--methods`) wait for a run
        that names them."""
        jobs = []
        for r in self.rows:
            if r.get("phase") != "search" or not r.get("ok"):
                continue
            if r["method"] not in self.methods or r["seed"] not in self.seeds:
                continue
            jobs += self.followups_of(r["method"], r["seed"], r["arch"], float(r.get("search_time_s") or 0.0),
                                      str(Path(r["config"]["out"])))
        return jobs

    # ---- estimating ---------------------------------------------------------------------------------
    def cost_model(self) -> Any:
        from .estimate import CostModel

        extra = read_rows(Path(self.calibrate_from)) if self.calibrate_from else []
        return CostModel.from_rows(extra + self.rows)

    def predict(self, job: dict[str, Any], model: Any, found: dict[str, Any] | None = None) -> float:
        """Predicted seconds of `job`; `found` = {"space", "mmacs", "search_s"} of its method's network."""
        from .estimate import JOB_OVERHEAD_S, MATCH_S, RANK_SCORE_S, RS_SAMPLE_DEFAULT_S, RS_SAMPLE_S, SPACE_ALIASES

        p = self.preset
        n = p.n_train or _dataset_size(self, "train")
        n_test = p.n_test or _dataset_size(self, "test")
        kind = job["kind"]
        if kind == "search":
            return model.search_s(job["method"], n)
        epochs = int({**_preset_epochs(p.retrain_preset), **p.retrain_overrides}.get("epochs", 1))
        evals = _evals(p.retrain_overrides, epochs) * n_test
        if kind == "train" and "arch" in job and found is None:
            from .jobs import sized_for_recipe

            a = sized_for_recipe(job["arch"], job.get("net", {}))
            return model.train_s(a.space, a.costs["macs"] / 1e6, n, epochs, evals)
        space, mmacs = found["space"], found["mmacs"]
        retrain = model.train_s(space, mmacs, n, epochs, evals)
        if kind == "train":
            return retrain
        if kind in ("random", "reference"):
            return MATCH_S + retrain
        if kind == "rs":  # the search's time on candidates, plus drawing each one at the MACs, plus the retrain
            rs_epochs = int({**_preset_epochs(p.rs_recipe_preset), **p.rs_overrides}.get("epochs", 1))
            n_val = int(n * p.val_fraction)
            n_fit = min(p.rs_n_train or n, n - n_val)
            one = model.train_s(space, mmacs, n_fit, rs_epochs, _evals(p.rs_overrides, rs_epochs) * n_val)
            draw = RS_SAMPLE_S.get(SPACE_ALIASES.get(space, space), RS_SAMPLE_DEFAULT_S)
            return found["search_s"] * (1.0 + draw / one) + retrain
        if kind == "rank":
            from nas_common.registry import get_method

            try:
                if not get_method(job["method"]).ranks():
                    return JOB_OVERHEAD_S  # it records that the method has no ranking hook, and ends
            except Exception:  # noqa: BLE001 - a broken package fails in its own job
                return JOB_OVERHEAD_S
            r_epochs = int({**_preset_epochs(p.retrain_preset), **p.rank_overrides}.get("epochs", 1))
            one = model.train_s(space, mmacs, n, r_epochs, _evals(p.rank_overrides, r_epochs) * n_test)
            return p.rank_samples * (one + RANK_SCORE_S)
        return retrain

    def plan(self, model: Any) -> list[tuple[int, dict[str, Any], float]]:
        """(wave, job, predicted seconds) of every job of this run, done or not; follow-ups of searches
        that have not run yet are planned with the method's calibrated space, MACs and search time."""
        from .jobs import sized_for_recipe

        out: list[tuple[int, dict[str, Any], float]] = []
        searches = {r["key"]: r for r in self.rows if r.get("phase") == "search"}
        for job in self.search_jobs():
            secs = self.predict(job, model)
            out.append((1, job, secs))
            row = searches.get(job["key"])
            if row is not None and not row.get("ok"):
                continue
            m, s = job["method"], job["seed"]
            if row is not None:
                a = sized_for_recipe(row["arch"], self.preset.net)
                found = {"space": a.space, "mmacs": a.costs["macs"] / 1e6,
                         "search_s": float(row.get("search_time_s") or 0.0)}
                arch, search_s = row["arch"], found["search_s"]
            else:
                space, mmacs = model.found(m, self.preset.net, _declared_spaces(m))
                found = {"space": space, "mmacs": mmacs, "search_s": secs}
                arch, search_s = {"space": space}, secs
            for f in self.followups_of(m, s, arch, search_s, job["out"]):
                out.append((2, f, self.predict(f, model, found)))
        out += [(1, j, self.predict(j, model)) for j in self.baseline_jobs()]
        return out

    def estimate(self, model: Any | None = None) -> dict[str, Any]:
        """Predicted wall time of what is left: each wave's longest-first schedule on `jobs` workers."""
        from .estimate import makespan

        model = model or self.cost_model()
        plan = self.plan(model)
        left = [(w, j, t) for w, j, t in plan if j["key"] not in self.done]
        workers = self.jobs if self.launcher_name == "local" else max(self.jobs, 1)
        waves = {w: makespan([t for ww, _, t in left if ww == w], workers) for w in (1, 2)}
        by_kind: dict[str, list[float]] = {}
        for _, j, t in left:
            by_kind.setdefault(j["kind"], []).append(t)
        self._predicted = {j["key"]: t for _, j, t in plan}
        self._planned_total = len(plan)
        return {"seconds": sum(waves.values()), "waves": waves, "jobs_left": len(left), "jobs_total": len(plan),
                "by_kind": {k: (len(v), sum(v)) for k, v in by_kind.items()}, "workers": workers}

    # ---- running --------------------------------------------------------------------------------------
    def _eta(self) -> str:
        from .estimate import format_duration

        left = [t for k, t in self._predicted.items() if k not in self.done]
        if not left:
            return ""
        done_pred = sum(self._predicted.get(r["key"], 0.0) for r in self.ran)
        done_real = sum(float(r.get("job_wall_s") or 0.0) for r in self.ran)
        ratio = done_real / done_pred if done_pred > 0 and done_real > 0 else 1.0
        return f", ~{format_duration(ratio * sum(left) / self.jobs)} left"

    def _on_done(self, job: dict[str, Any], res: dict[str, Any]) -> None:
        from nas_common.runs import provenance

        from .estimate import format_duration

        phase = job["key"].split("/")[0]
        row = {"key": job["key"], "phase": phase, "method": job.get("method") or job.get("label"),
               "label": job.get("label") or job.get("method"), "seed": job["seed"], "dataset": job["dataset"],
               "preset": self.preset.name, "run_digest": self.digest,
               **{k: v for k, v in res.items() if k != "traceback"},
               "config": job, "provenance": provenance(res.get("device"), job["seed"]),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if not res.get("ok") and res.get("traceback"):
            row["traceback_tail"] = res["traceback"][-2000:]
        append_row(self.out, row)
        self.rows = [r for r in self.rows if r.get("key") != row["key"]] + [row]  # a retry supersedes a failure
        self.ran.append(row)
        self.done.add(job["key"])
        if not self.quiet:
            what = (f"{res.get('test_acc', 0) or 0:.3f} acc" if "test_acc" in res else
                    f"{(res.get('macs') or 0) / 1e6:.1f}M MACs" if phase == "search" else
                    _tau(res.get("kendall_tau")))
            if res.get("ok") and phase in ("random", "reference", "rs"):
                what += f", MACs {100 * res['match']['mac_gap']:+.1f}%"
            if res.get("ok") and phase == "rs":
                what += f", best of {res['rs_candidates']} in {res['rs_spent_s']:.0f}s/{res['time_budget_s']:.0f}s"
            status = what if res.get("ok") else f"FAILED: {res.get('error')}"
            total = max(self._planned_total, len(self.done))
            print(f"  [{len(self.done)}/{total}] {job['key']:28s} {res.get('job_wall_s', 0):7.1f}s  {status}  "
                  f"(elapsed {format_duration(time.time() - self._t0)}{self._eta()})", flush=True)

    def _launch(self, jobs: list[dict[str, Any]]) -> None:
        from .launchers import make_launcher

        todo = [j for j in jobs if j["key"] not in self.done]
        if not todo:
            return
        # longest first: the list schedule the estimate assumes, and a short tail
        todo.sort(key=lambda j: -self._predicted.get(j["key"], 0.0))
        make_launcher(self.launcher_name, self.jobs, self.out).run(todo, self._on_done)

    def print_estimate(self, est: dict[str, Any]) -> None:
        from .estimate import format_duration

        parts = ", ".join(f"{n} {k} {format_duration(t)}" for k, (n, t) in sorted(est["by_kind"].items()))
        print(f"estimate: ~{format_duration(est['seconds'])} wall for {est['jobs_left']} of {est['jobs_total']} "
              f"jobs on {est['workers']} worker(s) (job-seconds: {parts or 'none'}); from measured per-job "
              f"times (tools/bench/estimate.py)", flush=True)

    def run(self) -> dict[str, Any]:
        check_dependencies()
        self._t0 = t0 = time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        est = self.estimate()
        if not self.quiet:
            print(f"harness: preset {self.preset.name}, dataset {self.dataset}, methods "
                  f"{', '.join(self.methods) or 'none'}, seeds {list(self.seeds)}, launcher {self.launcher_name} "
                  f"x{self.jobs}, out {self.out} ({len(self.done)} rows already done)", flush=True)
            if self.preset.note:
                print(f"note: {self.preset.note}", flush=True)
            self.print_estimate(est)
        self._launch(self.search_jobs() + self.baseline_jobs())
        self.estimate()  # the found networks are known now: re-plan the follow-ups with them
        self._launch(self.followup_jobs())
        wall = time.time() - t0
        from .report import write_report

        summary = write_report(self.out, self.rows)
        summary["wall_s"] = wall
        summary["estimate_s"] = est["seconds"]
        # the harness's own cost: everything but the searches and trainings it ran (serial runs only)
        inner = sum(job_inner_time(r) for r in self.ran)
        summary["jobs_run"] = len(self.ran)
        summary["overhead_s"] = wall - inner if self.jobs == 1 and self.ran else None
        summary["overhead_frac"] = (wall - inner) / wall if self.jobs == 1 and self.ran and wall > 0 else None
        from nas_common.io import atomic_write_text

        atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
        return summary


def run_digest(preset: BenchPreset, dataset: str, budget_macs: float | None, budget_params: float | None) -> str:
    """12 hex digits naming what shapes a run's rows: the preset's fields (not its note, its default seeds
    or the test level, which change no row), the dataset and the budgets."""
    import dataclasses
    import hashlib

    fields = {k: v for k, v in dataclasses.asdict(preset).items() if k not in ("note", "seeds", "alpha")}
    blob = json.dumps({"preset": fields, "dataset": dataset, "budget_macs": budget_macs,
                       "budget_params": budget_params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _declared_spaces(method: str) -> tuple[str, ...]:
    """The spaces a method declares (empty for a package that fails to load: its search job says why)."""
    from nas_common.registry import get_method

    try:
        return tuple(get_method(method).spaces)
    except Exception:  # noqa: BLE001
        return ()


def _preset_epochs(preset: str) -> dict[str, Any]:
    from nas_common.train.config import TrainConfig

    return {"epochs": TrainConfig().epochs, **TrainConfig.PRESETS.get(preset, {})}


def _evals(overrides: dict[str, Any], epochs: int) -> int:
    """How many times a training run evaluates the test split (every `eval_every` epochs and at the end)."""
    every = int(overrides.get("eval_every", 1))
    return 1 if every <= 0 else max(1, epochs // every)


def _dataset_size(h: Harness, part: str) -> int:
    """Images in the harness's dataset split (for presets that take all of them); loads the dataset once."""
    cache = h.__dict__.setdefault("_sizes", {})
    if part not in cache:
        from nas_common.data import get_dataset

        ds = get_dataset(h.dataset, data_dir=h.data_dir, download=False)
        cache.update({"train": len(ds.train), "test": len(ds.test)})
    return cache[part]


def job_inner_time(row: dict[str, Any]) -> float:
    """Seconds a job spent searching or training (what the harness does not add)."""
    if row.get("phase") == "search":
        return float(row.get("search_time_s") or 0.0)
    if row.get("phase") == "rank":
        return float(row.get("job_wall_s") or 0.0)
    if row.get("phase") == "rs":
        return float(row.get("rs_spent_s") or 0.0) + float(row.get("retrain_time_s") or 0.0)
    return float(row.get("retrain_time_s") or 0.0)

