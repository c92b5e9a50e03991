"""Ray and submitit place the same jobs as the local launcher (tested against a local Ray instance and
submitit's local executor)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def fake_jobs(out: Path) -> list[dict]:
    base = {"kind": "search", "dataset": "cifar10-mini", "n_train": 16, "n_test": 8, "preset": "tiny",
            "overrides": {}, "device": "cpu", "threads": 1}
    return [{**base, "key": f"search/{m}/s0", "seed": 0, "method": m, "out": str(out / m)} for m in ("fake", "broken")]


def check(results: dict[str, dict]) -> None:
    assert results["search/fake/s0"]["ok"] and results["search/fake/s0"]["space"] == "resnet"
    assert not results["search/broken/s0"]["ok"] and "always fails" in results["search/broken/s0"]["error"]


@pytest.fixture
def fake_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_EXTRA_METHODS", "fake=tools.bench.fake:FakeSearch,broken=tools.bench.fake:BrokenSearch")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def test_resources_come_from_the_command_line() -> None:
    import argparse

    from tools.bench.launchers import Resources, add_launcher_arguments, resources_from_args

    p = argparse.ArgumentParser()
    add_launcher_arguments(p)
    r = resources_from_args(p.parse_args(["--partition", "gpu", "--gpus-per-task", "2", "--cpus-per-task", "8",
                                          "--mem-gb", "32", "--time-min", "90"]))
    assert r == Resources(partition="gpu", gpus_per_task=2, cpus_per_task=8, mem_gb=32.0, time_min=90)
    assert r.submitit_parameters() == {"timeout_min": 90, "gpus_per_node": 2, "cpus_per_task": 8, "tasks_per_node": 1,
                                       "nodes": 1, "mem_gb": 32.0, "slurm_partition": "gpu"}
    assert r.ray_options() == {"num_cpus": 8, "num_gpus": 2, "memory": 32 * 2**30}
    assert resources_from_args(p.parse_args([])) == Resources()


@pytest.mark.parametrize("kwargs", [{"gpus_per_task": -1}, {"cpus_per_task": 0}, {"mem_gb": 0}, {"time_min": 0}])
def test_bad_resources_are_one_line_errors(kwargs: dict) -> None:
    from nas_common.errors import ConfigError
    from tools.bench.launchers import Resources

    with pytest.raises(ConfigError):
        Resources(**kwargs)


def test_submitit_takes_the_resources(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    from tools.bench.launchers import Resources, SubmititLauncher

    launcher = SubmititLauncher(tmp_path, executor="local", resources=Resources(partition="gpu", cpus_per_task=3,
                                                                               mem_gb=2, time_min=30))
    params = launcher.executor._executor.parameters  # what submitit passes on (the local executor's subset)
    assert params["timeout_min"] == 30 and params["tasks_per_node"] == 1


@pytest.mark.slow
def test_ray_launcher_runs_jobs(tmp_path: Path, fake_env: None) -> None:
    ray = pytest.importorskip("ray")
    from tools.bench.launchers import RayLauncher

    results: dict[str, dict] = {}
    try:
        RayLauncher(jobs=2).run(fake_jobs(tmp_path), lambda job, res: results.__setitem__(job["key"], res))
    finally:
        ray.shutdown()
    check(results)


@pytest.mark.slow
def test_submitit_launcher_runs_jobs(tmp_path: Path, fake_env: None) -> None:
    pytest.importorskip("submitit")
    from tools.bench.launchers import SubmititLauncher

    results: dict[str, dict] = {}
    SubmititLauncher(tmp_path, executor="local").run(fake_jobs(tmp_path),
                                                      lambda job, res: results.__setitem__(job["key"], res))
    check(results)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_terminated_local_launcher_stops_its_running_jobs(tmp_path: Path) -> None:
    """SIGTERM to the harness (kill, timeout, a scheduler) must not leave its jobs computing on: the
    launcher stops them and exits, and no process of its group is left."""
    import signal
    import subprocess
    import sys
    import time

    job = {**fake_jobs(tmp_path)[0], "overrides": {"sleep_s": "120"}}
    script = (
        "import json, sys\n"
        "from tools.bench.launchers import LocalLauncher\n"
        "LocalLauncher(1).run([json.loads(sys.argv[1])], lambda j, r: None)\n"
    )
    env = {**os.environ, "NAS_EXTRA_METHODS": "fake=tools.bench.fake:FakeSearch",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    p = subprocess.Popen([sys.executable, "-c", script, __import__("json").dumps(job)], cwd=ROOT, env=env,
                         start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not Path(job["out"]).exists() and time.time() < deadline and p.poll() is None:
            time.sleep(0.2)
        time.sleep(1.0)  # the job is running (its run directory exists)
        assert p.poll() is None, p.communicate()[0]
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        deadline = time.time() + 30
        while _group_alive(p.pid) and time.time() < deadline:
            time.sleep(0.2)
        assert not _group_alive(p.pid), "a job process outlived the terminated launcher"
    finally:
        if _group_alive(p.pid):
            os.killpg(p.pid, signal.SIGKILL)
