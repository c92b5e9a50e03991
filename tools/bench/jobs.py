"""Harness jobs. Each job is a pure function of its config (a JSON-able dict) and writes its own result
file, so any launcher (local processes, Ray, SLURM through submitit) only has to place jobs.

    {"kind": "search", "key": ..., "method": "tas", "dataset": "cifar10-mini", "n_train": 512, ...}
    {"kind": "train",  "key": ..., "arch": {...arch.json...}, "recipe": {...}, ...}
    {"kind": "rank",   "key": ..., "method": "nat", "search_dir": ..., "samples": 3, ...}

`python -m tools.bench.jobs JOB.json` runs one job (what Ray and submitit call).
"""
from __future__ import annotations

import json
import os
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
    task = Task(dataset=_dataset(job), device=resolve_device(job.get("device")), seed=job["seed"], budget=budget)
    t0 = time.time()
    result, arch = run_search(job["method"], task, out=job["out"], preset=job["preset"],
                              overrides=job.get("overrides", {}), resume=True, progress=False)
    return {"arch": arch.to_dict(), "space": arch.space, "macs": arch.costs.get("macs"),
            "params": arch.costs.get("params"), "search_time_s": time.time() - t0,
            "over_budget": budget.violations(arch.costs), "search_metrics": result.metrics,
            "device": str(task.device), "threads": torch.get_num_threads()}


def sized_for_recipe(arch_dict: dict[str, Any], net: dict[str, dict[str, Any]]) -> Any:
    """The arch with the preset's evaluation-network size for its space (same for every arch of the space)."""
    from nas_common.arch import Arch

    arch = Arch.from_dict(arch_dict)
    size = net.get(arch.space)
    if size:
        arch = arch.replace(net={**arch.net, **size}, costs={})
    return arch.with_costs()


def _torchrun_train(job: dict[str, Any], arch: Any) -> dict[str, Any]:
    """The same retrain as a data-parallel `torchrun --nproc-per-node N ... nas train` job."""
    import subprocess

    import numpy as np

    from nas_common.arch import save_arch

    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    arch_file = save_arch(arch, out.parent / f"{out.name}.arch.json")
    dataset = job["dataset"]
    if job.get("n_train") or job.get("n_test"):  # the harness's subset, as a file every rank can read
        ds = _dataset(job)
        tr, te = ds.train, ds.test
        npz = out.parent / f"{out.name}.data.npz"
        np.savez(npz, x_train=tr.x.permute(0, 2, 3, 1).numpy(), y_train=tr.y.numpy(),
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


def train_job(job: dict[str, Any]) -> dict[str, Any]:
    """Retrain one architecture from scratch with the shared recipe and evaluate it on the test split."""
    import torch

    from nas_common.train import train_arch

    _set_threads(job)
    arch = sized_for_recipe(job["arch"], job.get("net", {}))
    if int(job.get("nproc") or 1) > 1:
        return _torchrun_train(job, arch)
    t0 = time.time()
    res = train_arch(arch, _dataset(job), out=job["out"], preset=job["recipe_preset"],
                     overrides=job.get("recipe_overrides", {}), seed=job["seed"], device=job.get("device"),
                     resume=True, adapt=True, progress=False)
    return {"space": arch.space, "macs": res.arch.costs["macs"], "params": res.arch.costs["params"],
            "retrain_time_s": time.time() - t0, "test_acc": _top1(res.metrics), "metrics": res.metrics,
            "arch_digest": arch.digest, "device": str(next(res.model.parameters()).device),
            "threads": torch.get_num_threads()}


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
    hook = getattr(cls, "sample_and_score", None)
    if hook is None:
        return {"kendall_tau": None, "note": "method has no sample_and_score hook"}
    ds = _dataset(job)
    task = Task(dataset=ds, device=resolve_device(job.get("device")), seed=job["seed"])
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
    return {"kendall_tau": None if tau != tau else float(tau), "supernet_acc": shared, "standalone_acc": alone}


JOBS = {"search": search_job, "train": train_job, "rank": rank_job}


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
    tmp = Path(job["out"]) / (RESULT_NAME + ".tmp")
    tmp.write_text(json.dumps(out, default=str))
    os.replace(tmp, Path(job["out"]) / RESULT_NAME)
    return out


def read_result(job: dict[str, Any]) -> dict[str, Any] | None:
    p = Path(job["out"]) / RESULT_NAME
    return json.loads(p.read_text()) if p.exists() else None


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    res = run_job(spec)
    sys.exit(0 if res.get("ok") else 1)
