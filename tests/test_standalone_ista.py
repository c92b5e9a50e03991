"""`pip install ista-nas` alone: the wheels of nas-common and ista-nas in a fresh virtual environment
(with the pinned torch and nothing else of this repository) run a search through the `nas` command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
POETRY = ROOT / ".venv" / "bin" / "poetry"
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
MICRO = ["layers=2", "C=4", "epochs=1", "batch_size=16", "eval_C=4", "eval_layers=2"]


def _run(cmd: list[str], cwd: Path | None = None, timeout: int = 600, env: dict | None = None) -> str:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, (f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n"
                                 f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout


def _requires_dist(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


@pytest.mark.slow
@pytest.mark.skipif(not POETRY.exists(), reason="needs poetry in .venv (make setup)")
def test_ista_nas_installs_and_searches_alone(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    for pkg in ("nas-common", "ista-nas"):
        _run([str(POETRY), "build", "-q", "-f", "wheel", "-o", str(dist)], cwd=ROOT / "packages" / pkg)
    wheels = sorted(dist.glob("*.whl"))
    names = sorted(w.name.split("-")[0] for w in wheels)
    assert names == ["ista_nas", "nas_common"], wheels
    for w in wheels:
        reqs = _requires_dist(w)
        assert not [r for r in reqs if "file://" in r or " @ " in r], f"{w.name} has a path requirement: {reqs}"
    ista_reqs = _requires_dist(next(w for w in wheels if w.name.startswith("ista_nas")))
    assert any(r.replace(" ", "").replace("(", "").startswith("nas-common>=0.2") for r in ista_reqs), ista_reqs

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "--no-compile", *TORCH, *map(str, wheels)], timeout=900)
    listed = _run([str(py), "-m", "pip", "list", "--format=json"])
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert {"ista-nas", "nas-common"} <= installed
    assert not installed & {"nat-nas", "bsn-nas", "tas-nas", "posterior-nas"}, installed

    # a small dataset file in cifar10-mini's format
    rng = np.random.default_rng(0)
    data = tmp_path / "small.npz"
    np.savez(data, x_train=rng.integers(0, 255, (64, 16, 16, 3), dtype=np.uint8),
             y_train=rng.integers(0, 10, 64).astype(np.int64),
             x_test=rng.integers(0, 255, (16, 16, 16, 3), dtype=np.uint8),
             y_test=rng.integers(0, 10, 16).astype(np.int64))
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    overrides = [a for o in MICRO for a in ("-o", o)]
    _run([str(venv / "bin" / "nas"), "search", "ista-nas", "--dataset", f"npz:{data}", "--preset", "tiny",
          *overrides, "--device", "cpu", "--out", str(out)], cwd=tmp_path, env=env)
    arch = json.loads((out / "arch.json").read_text())
    assert arch["method"] == "ista-nas" and arch["space"] == "darts"
    assert len(arch["spec"]["normal"]) == 8
