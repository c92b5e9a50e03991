"""Launchers place jobs; they know nothing about what a job does (see jobs.py).

- local: each job in its own process (crash-isolated), up to `jobs` at a time. Processes are forked
  from a server that has imported torch and nas_common once, so a job starts in milliseconds, not the
  seconds a fresh interpreter takes to import torch.
- ray: each job as a Ray task running the job in a subprocess (`ray` installed by those who use it;
  RAY_ADDRESS picks the cluster, else a local instance is started), with per-job CPUs, GPUs and memory.
- submitit: each job as a SLURM job (or, with `executor="local"`, a local one, as in the tests), with a
  partition, GPUs and CPUs per task, memory and a time limit.

What a job gets is a `Resources` value, read from the command line by `add_launcher_arguments` /
`resources_from_args` (`--partition gpu --gpus-per-task 1 --cpus-per-task 8 --mem-gb 32 --time-min 600`).
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .jobs import RESULT_NAME, read_result, run_job

Done = Callable[[dict[str, Any], dict[str, Any]], None]


@dataclass(frozen=True)
class Resources:
    """What one job asks of the scheduler (Ray or SLURM through submitit); None: the scheduler's default."""

    partition: str | None = None  # SLURM partition
    gpus_per_task: int = 0
    cpus_per_task: int = 1
    mem_gb: float | None = None
    time_min: int = 24 * 60  # SLURM time limit (minutes)

    def __post_init__(self) -> None:
        from nas_common.errors import ConfigError

        if self.gpus_per_task < 0 or self.cpus_per_task < 1:
            raise ConfigError(f"--gpus-per-task must be >= 0 and --cpus-per-task >= 1, got {self.gpus_per_task} and "
                              f"{self.cpus_per_task}")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise ConfigError(f"--mem-gb must be positive, got {self.mem_gb}")
        if self.time_min < 1:
            raise ConfigError(f"--time-min must be a positive number of minutes, got {self.time_min}")

    def submitit_parameters(self) -> dict[str, Any]:
        """submitit AutoExecutor.update_parameters(...) keywords (one task per job)."""
        params: dict[str, Any] = {"timeout_min": int(self.time_min), "gpus_per_node": int(self.gpus_per_task),
                                  "cpus_per_task": int(self.cpus_per_task), "tasks_per_node": 1, "nodes": 1}
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        if self.partition:
            params["slurm_partition"] = self.partition
        return params

    def ray_options(self) -> dict[str, Any]:
        """ray.remote(...) options of one job."""
        opts: dict[str, Any] = {"num_cpus": self.cpus_per_task, "num_gpus": self.gpus_per_task}
        if self.mem_gb is not None:
            opts["memory"] = int(self.mem_gb * 2**30)
        return opts


def add_launcher_arguments(p: argparse.ArgumentParser) -> None:
    """The harness's resource options (used by --launcher ray and submitit)."""
    g = p.add_argument_group("resources per job (--launcher ray or submitit)")
    g.add_argument("--partition", default=None, help="SLURM partition (submitit)")
    g.add_argument("--gpus-per-task", type=int, default=0, help="GPUs per job (default 0)")
    g.add_argument("--cpus-per-task", type=int, default=1, help="CPUs per job (default 1)")
    g.add_argument("--mem-gb", type=float, default=None, help="memory per job in GiB (default: the scheduler's)")
    g.add_argument("--time-min", type=int, default=24 * 60, help="SLURM time limit per job in minutes (default 1440)")


def resources_from_args(args: argparse.Namespace) -> Resources:
    return Resources(partition=getattr(args, "partition", None), gpus_per_task=getattr(args, "gpus_per_task", 0),
                     cpus_per_task=getattr(args, "cpus_per_task", 1), mem_gb=getattr(args, "mem_gb", None),
                     time_min=getattr(args, "time_min", 24 * 60))


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
        """Run `jobs`, `self.jobs` at a time. Stopped (Ctrl-C, or SIGTERM from `kill`, `timeout` or a
        scheduler), it stops its running jobs before it returns: a killed harness leaves no job computing
        on, and a resumed run redoes only the jobs that were cut."""
        pending = list(jobs)
        running: list[tuple[Any, dict[str, Any]]] = []
        with _sigterm_as_exit():
            try:
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
            finally:
                for p, _ in running:
                    if p.is_alive():
                        p.terminate()
                for p, _ in running:
                    p.join(timeout=10)
                    if p.is_alive():
                        p.kill()


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit(143) in the main thread (as Ctrl-C raises KeyboardInterrupt), so that
    `finally` blocks run; elsewhere (a thread cannot set handlers) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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

    def __init__(self, jobs: int = 1, address: str | None = None, resources: Resources | None = None) -> None:
        self.resources = resources or Resources()
        try:
            import ray
        except ImportError:
            from nas_common.errors import ConfigError

            raise ConfigError("--launcher ray needs Ray: pip install 'ray[default]'") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address or os.environ.get("RAY_ADDRESS"), num_cpus=None if address else jobs,
                     include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
        self.remote = ray.remote(**self.resources.ray_options())(_subprocess_job)

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

    def __init__(self, folder: str | Path, executor: str = "auto", resources: Resources | None = None,
                 **params: Any) -> None:
        """`executor` "auto" (SLURM when present), "local" or "debug"; `resources` what each job asks
        for; `params` any further submitit parameters (they win over `resources`)."""
        try:
            import submitit
        except ImportError:
            from nas_common.errors import ConfigError

            raise ConfigError("--launcher submitit needs submitit: pip install submitit") from None
        self.resources = resources or Resources()
        folder = Path(folder) / "submitit"
        cluster = None if executor == "auto" else executor
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        self.executor.update_parameters(**{**self.resources.submitit_parameters(), **params})

    def run(self, jobs: Sequence[dict[str, Any]], on_done: Done) -> None:
        handles = [(self.executor.submit(_subprocess_job, job), job) for job in jobs]
        for h, job in handles:
            try:
                res = h.result()
            except Exception as e:  # noqa: BLE001
                res = {"ok": False, "error": f"submitit: {type(e).__name__}: {e}"}
            on_done(job, res)


def make_launcher(name: str, jobs: int, out: Path, resources: Resources | None = None) -> Any:
    """The launcher `name` (local, ray, submitit); `resources` is what each Ray or SLURM job asks for
    (from the command line: `resources_from_args`)."""
    if name == "local":
        return LocalLauncher(jobs)
    if name == "ray":
        return RayLauncher(jobs, resources=resources)
    if name == "submitit":
        return SubmititLauncher(out, executor=os.environ.get("NAS_SUBMITIT_EXECUTOR", "auto"), resources=resources)
    from nas_common.errors import ConfigError

    raise ConfigError(f"unknown launcher {name!r}: valid: local, ray, submitit")


__all__ = ["LocalLauncher", "RayLauncher", "Resources", "SubmititLauncher", "add_launcher_arguments", "make_launcher",
           "resources_from_args", "RESULT_NAME"]
