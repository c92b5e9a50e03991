"""Launchers place jobs; they know nothing about what a job does (see jobs.py).

- local: each job in its own process (crash-isolated), up to `jobs` at a time. Processes are forked
  from a server that has imported torch and nas_common once, so a job starts in milliseconds, not the
  seconds a fresh interpreter takes to import torch.
- ray: each job as a Ray task running the job in a subprocess (`ray` installed by those who use it;
  RAY_ADDRESS picks the cluster, else a local instance is started).
- submitit: each job as a SLURM job (or, with `executor="local"`, a local one, as in the tests).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .jobs import RESULT_NAME, read_result, run_job

Done = Callable[[dict[str, Any], dict[str, Any]], None]


def _crash(job: dict[str, Any], code: Any) -> dict[str, Any]:
    res = read_result(job)
    return res if res is not None else {"ok": False, "error": f"job process died (exit code {code})"}


def _child(job: dict[str, Any]) -> None:
    res = run_job(job)
    sys.exit(0 if res.get("ok") else 1)


def preload_modules() -> list[str]:
    """What every job imports: loaded once in the fork server (torch, tensorboard, the method packages)."""
    from nas_common.registry import METHOD_GROUP, METHODS

    methods = sorted({ep.value.split(":")[0] for ep in METHODS.entry_points().values() if ep.group == METHOD_GROUP})
    return ["torch", "torch._dynamo", "torch.utils.flop_counter", "torch.utils.tensorboard", "nas_common",
            "nas_common.train", "nas_common.search",
            "scipy.stats", "tools.bench.jobs", *methods]


class LocalLauncher:
    name = "local"

    def __init__(self, jobs: int = 1) -> None:
        self.jobs = max(1, jobs)
        self.ctx = mp.get_context("forkserver") if sys.platform != "win32" else mp.get_context("spawn")
        if sys.platform != "win32":
            self.ctx.set_forkserver_preload(preload_modules())

    def run(self, jobs: Sequence[dict[str, Any]], on_done: Done) -> None:
        pending = list(jobs)
        running: list[tuple[Any, dict[str, Any]]] = []
        while pending or running:
            while pending and len(running) < self.jobs:
                job = pending.pop(0)
                p = self.ctx.Process(target=_child, args=(job,), name=f"job-{job['key']}")
                p.start()
                running.append((p, job))
            for p, job in list(running):
                if not p.is_alive():
                    p.join()
                    running.remove((p, job))
                    on_done(job, _crash(job, p.exitcode))
            time.sleep(0.05)


def _subprocess_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job in a fresh interpreter (Ray's tasks and SLURM jobs use this)."""
    Path(job["out"]).mkdir(parents=True, exist_ok=True)
    from nas_common.io import atomic_write_json

    spec = atomic_write_json(Path(job["out"]) / "job.json", job)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "tools.bench.jobs", str(spec)], env=env, capture_output=True,
                          text=True)
    res = read_result(job)
    if res is None:
        return {"ok": False, "error": f"job process died (exit code {proc.returncode}): {proc.stderr[-500:]}"}
    return res


class RayLauncher:
    name = "ray"

    def __init__(self, jobs: int = 1, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            from nas_common.errors import ConfigError

            raise ConfigError("--launcher ray needs Ray: pip install 'ray[default]'") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address or os.environ.get("RAY_ADDRESS"), num_cpus=None if address else jobs,
                     include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
        self.remote = ray.remote(num_cpus=1)(_subprocess_job)

    def run(self, jobs: Sequence[dict[str, Any]], on_done: Done) -> None:
        refs = {self.remote.remote(job): job for job in jobs}
        while refs:
            ready, _ = self.ray.wait(list(refs), num_returns=1)
            for r in ready:
                job = refs.pop(r)
                try:
                    res = self.ray.get(r)
                except Exception as e:  # noqa: BLE001 - a lost worker is a failed job
                    res = {"ok": False, "error": f"ray: {type(e).__name__}: {e}"}
                on_done(job, res)


class SubmititLauncher:
    name = "submitit"

    def __init__(self, folder: str | Path, executor: str = "auto", **params: Any) -> None:
        try:
            import submitit
        except ImportError:
            from nas_common.errors import ConfigError

            raise ConfigError("--launcher submitit needs submitit: pip install submitit") from None
        folder = Path(folder) / "submitit"
        if executor == "local":
            self.executor = submitit.LocalExecutor(folder=str(folder))
        else:
            self.executor = submitit.AutoExecutor(folder=str(folder))
        self.executor.update_parameters(timeout_min=params.pop("timeout_min", 24 * 60), **params)

    def run(self, jobs: Sequence[dict[str, Any]], on_done: Done) -> None:
        handles = [(self.executor.submit(_subprocess_job, job), job) for job in jobs]
        for h, job in handles:
            try:
                res = h.result()
            except Exception as e:  # noqa: BLE001
                res = {"ok": False, "error": f"submitit: {type(e).__name__}: {e}"}
            on_done(job, res)


def make_launcher(name: str, jobs: int, out: Path) -> Any:
    if name == "local":
        return LocalLauncher(jobs)
    if name == "ray":
        return RayLauncher(jobs)
    if name == "submitit":
        return SubmititLauncher(out, executor=os.environ.get("NAS_SUBMITIT_EXECUTOR", "auto"))
    from nas_common.errors import ConfigError

    raise ConfigError(f"unknown launcher {name!r}: valid: local, ray, submitit")


__all__ = ["LocalLauncher", "RayLauncher", "SubmititLauncher", "make_launcher", "RESULT_NAME"]
