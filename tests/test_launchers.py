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
