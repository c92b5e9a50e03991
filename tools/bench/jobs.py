"""Harness jobs. Each job is a pure function of its config (a JSON-able dict) and writes its own result
file, so any launcher (local processes, Ray, SLURM through submitit) only has to place jobs.

    {"kind": "search",    "key": ..., "method": "tas", "dataset": "cifar10-mini", "n_train": 512, ...}
    {"kind": "train",     "key": ..., "arch": {...arch.json...}, "recipe_preset": ..., ...}
    {"kind": "random",    "key": ..., "target": {...the found arch...}, "match_seed": 0, "tolerance": 0.05, ...}
    {"kind": "reference", "key": ..., "target": {...}, "reference": None, ...}
    {"kind": "rs",        "key": ..., "target": {...}, "time_budget_s": 120.0, ...}
    {"kind": "rank",      "key": ..., "method": "nat", "search_dir": ..., "samples": 8, ...}

The data every job sees is cut the same way (`data_views`): the training split, of which a fixed
validation part (`val_fraction`, split seed `split_seed`) is held out for the choices random search
makes; the test split judges the retrained networks only. A search is handed the training split with
the validation part in the place of the test split, so no choice of any method can touch the test
images. Each result names the data and the split that judged it (`judged_on`, with a fingerprint).

`python -m tools.bench.jobs JOB.json` runs one job (what Ray and submitit call).
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

RESULT_NAME = "job-result.json"


def _dataset(job: dict[str, Any]) -> Any:
    from nas_common.data import get_dataset

    ds = get_dataset(job["dataset"], data_dir=job.get("data_dir"), download=job.get("download", False))
    return ds.subset(job.get("n_train"), job.get("n_test"))


def data_views(ds: Any, val_fraction: float = 0.0, split_seed: int = 0) -> dict[str, Any]:
    """The parts of `ds` the protocol uses: train (all training images), fit and val (train without and
    with only the held-out validation part; val is None when `val_fraction` is 0), test."""
    if val_fraction and val_fraction > 0:
        fit, val = ds.train.split(1.0 - val_fraction, seed=split_seed)
    else:
        fit, val = ds.train, None
    return {"train": ds.train, "fit": fit, "val": val, "test": ds.test}


def split_record(ds: Any, split: Any, name: str) -> dict[str, Any]:
    """Which data judged (or trained) something: dataset, split name, size and a content fingerprint."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    h.update(split.y.numpy().astype(np.int64).tobytes())
    if split.in_memory:
        h.update(np.ascontiguousarray(split.x.numpy()).tobytes())
    else:  # disk: the files it reads
        samples = getattr(split.source, "samples", None)
        idx = split.indices.tolist() if split.indices is not None else range(len(split.y))
        if samples is not None:
            for i in idx:
                h.update(str(samples[i][0]).encode())
    return {"dataset": ds.name, "split": name, "n": len(split), "fingerprint": h.hexdigest()[:16]}


def search_dataset(ds: Any, views: dict[str, Any]) -> Any:
    """What a search is handed: the training split, with the validation part where the test split was."""
    from dataclasses import replace

    return replace(ds, test=views["val"] if views["val"] is not None else views["train"].head(1))


def _set_threads(job: dict[str, Any]) -> None:
    import torch

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))


def search_job(job: dict[str, Any]) -> dict[str, Any]:
    """One method's search on the benchmark's data, seed and budget; returns the found arch and timings."""
    import torch

    from nas_common.device import resolve_device
    from nas_common.methods import Budget, Task
    from nas_common.search import run_search

    _set_threads(job)
    budget = Budget(macs=job.get("budget_macs"), params=job.get("budget_params"))
    ds = _dataset(job)
    views = data_views(ds, job.get("val_fraction", 0.0), job.get("split_seed", 0))
    task = Task(dataset=search_dataset(ds, views), device=resolve_device(job.get("device")), seed=job["seed"],
                budget=budget)
    t0 = time.time()
    result, arch = run_search(job["method"], task, out=job["out"], preset=job["preset"],
                              overrides=job.get("overrides", {}), resume=True, progress=False)
    return {"arch": arch.to_dict(), "space": arch.space, "macs": arch.costs.get("macs"),
            "params": arch.costs.get("params"), "search_time_s": time.time() - t0,
            "over_budget": budget.violations(arch.costs), "search_metrics": result.metrics,
            "device": str(task.device), "threads": torch.get_num_threads(),
            "trained_on": split_record(ds, views["train"], "train"),
            "held_out_for_method": split_record(ds, task.dataset.test, "val" if views["val"] is not None
                                                else "train[:1]")}


def sized_for_recipe(arch_dict: dict[str, Any], net: dict[str, dict[str, Any]]) -> Any:
    """The arch with the preset's evaluation-network size for its space (same for every arch of the space)."""
    from nas_common.arch import Arch

    from .matching import counted

    arch = Arch.from_dict(arch_dict)
    size = net.get(arch.space)
    if size:
        arch = arch.replace(net={**arch.net, **size}, costs={})
    return counted(arch.space, arch.spec, arch.net).replace(method=arch.method, provenance=arch.provenance)


def _torchrun_train(job: dict[str, Any], arch: Any) -> dict[str, Any]:
    """The same retrain as a data-parallel `torchrun --nproc-per-node N ... nas train` job."""
    import subprocess

    import numpy as np

    from nas_common.arch import save_arch
    from nas_common.io import atomic_path

    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    arch_file = save_arch(arch, out.parent / f"{out.name}.arch.json")
    dataset = job["dataset"]
    if job.get("n_train") or job.get("n_test"):  # the harness's subset, as a file every rank can read
        ds = _dataset(job)
        tr, te = ds.train, ds.test
        npz = out.parent / f"{out.name}.data.npz"
        with atomic_path(npz) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
            np.savez(f, x_train=tr.x.permute(0, 2, 3, 1).numpy(), y_train=tr.y.numpy(),
                     x_test=te.x.permute(0, 2, 3, 1).numpy(), y_test=te.y.numpy())
        dataset = f"npz:{npz}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(job["nproc"]), "-m",
           "nas_common.cli", "train", str(arch_file), "--dataset", dataset, "--out", str(out), "--preset",
           job["recipe_preset"], "--seed", str(job["seed"]), "--resume", "--adapt", "--no-progress"]
    for k, v in job.get("recipe_overrides", {}).items():
        cmd += ["-o", f"{k}={v}"]
    if job.get("data_dir"):
        cmd += ["--data-dir", job["data_dir"]]
    if job.get("device"):
        cmd += ["--device", job["device"]]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    res = json.loads((out / "result.json").read_text())
    return {"space": arch.space, "macs": arch.costs["macs"], "params": arch.costs["params"],
            "retrain_time_s": time.time() - t0, "test_acc": _top1(res.get("metrics", {})),
            "metrics": res.get("metrics", {}), "arch_digest": arch.digest, "nproc": job["nproc"],
            "device": res.get("provenance", {}).get("device")}


def _fit(job: dict[str, Any], arch: Any, ds: Any, out: Path | str, recipe_preset: str | None = None,
         overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `arch` on ds.train with the job's recipe and evaluate it once it is trained on ds.test."""
    from nas_common.train import train_arch

    t0 = time.time()
    res = train_arch(arch, ds, out=out, preset=recipe_preset or job["recipe_preset"],
                     overrides=job.get("recipe_overrides", {}) if overrides is None else overrides,
                     seed=job["seed"], device=job.get("device"), resume=True, adapt=True, progress=False)
    return {"space": arch.space, "macs": res.arch.costs["macs"], "params": res.arch.costs["params"],
            "retrain_time_s": time.time() - t0, "test_acc": _top1(res.metrics), "metrics": res.metrics,
            "arch_digest": arch.digest, "device": str(next(res.model.parameters()).device)}


def _retrain(job: dict[str, Any], arch: Any) -> dict[str, Any]:
    """The shared recipe on all training images, judged on the test split (data-parallel when nproc > 1)."""
    import torch

    ds = _dataset(job)
    out = _torchrun_train(job, arch) if int(job.get("nproc") or 1) > 1 else _fit(job, arch, ds, job["out"])
    return {**out, "threads": torch.get_num_threads(), "trained_on": split_record(ds, ds.train, "train"),
            "judged_on": split_record(ds, ds.test, "test")}


def train_job(job: dict[str, Any]) -> dict[str, Any]:
    """Retrain one architecture from scratch with the shared recipe and evaluate it on the test split."""
    _set_threads(job)
    return _retrain(job, sized_for_recipe(job["arch"], job.get("net", {})))


def random_job(job: dict[str, Any]) -> dict[str, Any]:
    """A random architecture of the found one's space within the MAC tolerance, retrained like it."""
    from .matching import MAC_TOLERANCE, random_arch_like

    _set_threads(job)
    target = sized_for_recipe(job["target"], job.get("net", {}))
    tol = job.get("tolerance", MAC_TOLERANCE)
    arch, match = random_arch_like(target, seed=job["match_seed"], tol=tol)  # MissingSpaceHook: the row's error
    return {**_retrain(job, arch), "arch": arch.to_dict(), "match": match, "target_macs": target.costs["macs"],
            "within_tolerance": abs(match["mac_gap"]) <= tol}


def reference_job(job: dict[str, Any]) -> dict[str, Any]:
    """The space's reference network scaled to the found architecture's MACs, retrained like it."""
    from .matching import MAC_TOLERANCE, reference_like

    _set_threads(job)
    target = sized_for_recipe(job["target"], job.get("net", {}))
    tol = job.get("tolerance", MAC_TOLERANCE)
    arch, match = reference_like(target, job.get("reference"), tol=tol)  # MissingSpaceHook: the row's error
    return {**_retrain(job, arch), "arch": arch.to_dict(), "match": match, "target_macs": target.costs["macs"],
            "within_tolerance": abs(match["mac_gap"]) <= tol, "reference": match["reference"]}


def random_search(sample: Any, score: Any, budget_s: float, done: list[dict[str, Any]] | None = None,
                  min_candidates: int = 1, max_candidates: int = 1000, clock: Any = time.monotonic,
                  record: Any = None) -> list[dict[str, Any]]:
    """Li & Talwalkar's random search under a wall-time budget.

    `sample(i)` draws candidate i, `score(i, cand)` trains it briefly and returns its validation
    accuracy. The budget is spent on training candidates (`seconds`); drawing one at the target's MACs
    is the harness's matching, not the baseline's work, and is only recorded (`sample_seconds`).
    Candidates are trained while the time spent stays closest to `budget_s`: the next one starts only
    if the spend plus half a typical candidate's time is within the budget (at least `min_candidates`).
    `done` holds the candidates of an interrupted run (their `seconds` count); `record(candidates)` is
    called after each one (to save progress). Returns every candidate as {"index", "candidate",
    "val_acc", "seconds", "sample_seconds"}.
    """
    cands = list(done or [])
    while len(cands) < max_candidates:
        spent = sum(c["seconds"] for c in cands)
        typical = spent / len(cands) if cands else 0.0
        if len(cands) >= min_candidates and spent + typical / 2 > budget_s:
            break
        i = len(cands)
        t0 = clock()
        cand = sample(i)
        t1 = clock()
        acc = score(i, cand)
        cands.append({"index": i, "candidate": cand, "val_acc": acc, "seconds": clock() - t1,
                      "sample_seconds": t1 - t0})
        if record is not None:
            record(cands)
    return cands


def rs_job(job: dict[str, Any]) -> dict[str, Any]:
    """Random search at equal compute: random archs of the found one's space at its MACs, each trained
    briefly on the fit part and scored on the validation part, for the wall time the method's search
    took; the best one is retrained with the shared recipe and judged on the test split."""
    from dataclasses import replace

    from nas_common.arch import Arch
    from nas_common.errors import ConfigError
    from nas_common.io import atomic_write_json

    from .matching import MAC_TOLERANCE, random_arch_like

    _set_threads(job)
    target = sized_for_recipe(job["target"], job.get("net", {}))
    tol = job.get("tolerance", MAC_TOLERANCE)
    ds = _dataset(job)
    views = data_views(ds, job.get("val_fraction", 0.0), job.get("split_seed", 0))
    if views["val"] is None:
        raise ConfigError("random search needs a validation part: set the preset's val_fraction above 0")
    fit = views["fit"].head(job["rs_n_train"]) if job.get("rs_n_train") else views["fit"]
    brief = replace(ds, train=fit, test=views["val"])
    out = Path(job["out"])
    state_file = out / "rs-candidates.json"
    done = json.loads(state_file.read_text())["candidates"] if state_file.exists() else []

    def sample(i: int) -> dict[str, Any]:
        arch, match = random_arch_like(target, seed=job["match_seed"] + 7919 * (i + 1), tol=tol)
        return {"arch": arch.to_dict(), "match": match}

    def score(i: int, cand: dict[str, Any]) -> float:
        res = _fit(job, Arch.from_dict(cand["arch"]), brief, out / f"candidate{i}", job["rs_recipe_preset"],
                   job.get("rs_recipe_overrides", {}))
        return float(res["test_acc"] or 0.0)  # the brief dataset's "test" is the validation part

    def record(cands: list[dict[str, Any]]) -> None:
        atomic_write_json(state_file, {"candidates": cands}, indent=None)

    cands = random_search(sample, score, float(job["time_budget_s"]), done=done,
                          min_candidates=job.get("rs_min_candidates", 1),
                          max_candidates=job.get("rs_max_candidates", 1000), record=record)
    best = max(cands, key=lambda c: c["val_acc"])  # the first of equals
    final = _retrain({**job, "out": str(out / "final")}, Arch.from_dict(best["candidate"]["arch"]))
    return {**final, "arch": best["candidate"]["arch"], "match": best["candidate"]["match"],
            "target_macs": target.costs["macs"], "within_tolerance": abs(best["candidate"]["match"]["mac_gap"]) <= tol,
            "rs_candidates": len(cands), "rs_val_accs": [c["val_acc"] for c in cands],
            "rs_best_index": best["index"], "rs_spent_s": sum(c["seconds"] for c in cands),
            "rs_sampling_s": sum(c.get("sample_seconds", 0.0) for c in cands),
            "time_budget_s": float(job["time_budget_s"]), "rs_best_val_acc": best["val_acc"],
            "selected_on": split_record(ds, views["val"], "val"),
            "candidates_trained_on": split_record(ds, fit, "fit")}


def _top1(metrics: dict[str, Any]) -> float | None:
    for k in ("test_top1", "top1", "test_acc", "acc"):
        if k in metrics:
            v = float(metrics[k])
            return v / 100.0 if v > 1.0 else v
    return None


def rank_job(job: dict[str, Any]) -> dict[str, Any]:
    """Kendall's tau between supernet accuracy and stand-alone accuracy over sampled architectures.

    Needs the method's optional hook `sample_and_score(run_dir, task, n, seed) -> [(Arch, supernet_acc)]`.
    """
    from scipy.stats import kendalltau

    from nas_common.device import resolve_device
    from nas_common.methods import Task
    from nas_common.registry import get_method
    from nas_common.train import train_arch

    _set_threads(job)
    cls = get_method(job["method"])
    if not cls.ranks():
        return {"kendall_tau": None, "note": "method has no sample_and_score hook"}
    ds = _dataset(job)
    task = Task(dataset=ds, device=resolve_device(job.get("device")), seed=job["seed"])
    views = data_views(ds, job.get("val_fraction", 0.0), job.get("split_seed", 0))
    task.dataset = search_dataset(ds, views)  # the hook scores on the search's own held-out images
    pairs = cls().sample_and_score(job["search_dir"], task, job["samples"], job["seed"])
    shared, alone = [], []
    for i, (arch, score) in enumerate(pairs):
        arch = sized_for_recipe(arch.to_dict(), job.get("net", {}))
        res = train_arch(arch, ds, out=Path(job["out"]) / f"arch{i}", preset=job["recipe_preset"],
                         overrides=job.get("recipe_overrides", {}), seed=job["seed"], device=job.get("device"),
                         resume=True, adapt=True, progress=False)
        shared.append(float(score))
        alone.append(_top1(res.metrics))
    tau = kendalltau(shared, alone).statistic if len(pairs) >= 2 else float("nan")
    return {"kendall_tau": None if tau != tau else float(tau), "supernet_acc": shared, "standalone_acc": alone,
            "judged_on": split_record(ds, ds.test, "test")}


JOBS = {"search": search_job, "train": train_job, "random": random_job, "reference": reference_job, "rs": rs_job,
        "rank": rank_job}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run `job`, never raising: a failure becomes a result with an `error` field. Writes the result file."""
    t0 = time.time()
    Path(job["out"]).mkdir(parents=True, exist_ok=True)
    try:
        out = {**JOBS[job["kind"]](job), "ok": True}
    except BaseException as e:  # noqa: BLE001 - a method's crash is data, not the harness's end
        if isinstance(e, KeyboardInterrupt):
            raise
        out = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=20)}
    out["job_wall_s"] = time.time() - t0
    from nas_common.io import atomic_write_text

    atomic_write_text(Path(job["out"]) / RESULT_NAME, json.dumps(out, default=str))
    return out


def read_result(job: dict[str, Any]) -> dict[str, Any] | None:
    p = Path(job["out"]) / RESULT_NAME
    return json.loads(p.read_text()) if p.exists() else None


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    res = run_job(spec)
    sys.exit(0 if res.get("ok") else 1)
