"""Exact resume: a training run interrupted after epoch k and resumed ends with the same weights and
metrics as an uninterrupted run (in process, and by killing a real `nas train` subprocess)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nas_common import Arch, RunInterrupted, get_arch, get_dataset, save_arch
from nas_common.config import resolve_config
from nas_common.errors import RunError
from nas_common.train import TrainConfig, train_arch

VOLATILE = {"train/time_s", "train/images_per_s"}




def tiny_resnet() -> Arch:
    spec = {"kind": "cifar", "block": "basic", "stem": 4, "depths": [1, 1, 1],
            "widths": [[[4, 4]], [[8, 8]], [[8, 8]]]}
    return Arch("resnet", spec, {"num_classes": 10, "input": [3, 32, 32]})


def tiny_darts() -> Arch:
    """DARTS-V2 cells, 3 layers, C 4, with the auxiliary head: drop path draws from the global RNG."""
    a = get_arch("darts-v2")
    return a.replace(net={**a.net, "C": 4, "layers": 3})


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=False)["state_dict"]


def metrics(run_dir: Path) -> list[dict]:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in recs]


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not diff, f"weights differ: {diff[:5]}"
    assert metrics(a) == metrics(b)


@pytest.mark.parametrize("arch_fn,preset", [(tiny_resnet, "tiny"), (tiny_darts, "darts-eval")])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, arch_fn, preset) -> None:
    ds = get_dataset("cifar10-mini").subset(48, 16)
    config = resolve_config(TrainConfig, preset=preset, values={"epochs": 3, "batch_size": 16, "eval_batch_size": 16})
    kw = {"config": config, "progress": False, "seed": 3}
    train_arch(arch_fn(), ds, out=tmp_path / "full", **kw)
    with pytest.raises(RunInterrupted):
        train_arch(arch_fn(), ds, out=tmp_path / "cut", interrupt_after=1, **kw)
    assert not (tmp_path / "cut" / "model.pt").exists()
    with pytest.raises(RunError, match="--resume"):  # a plain restart is refused
        train_arch(arch_fn(), ds, out=tmp_path / "cut", **kw)
    res = train_arch(arch_fn(), ds, out=tmp_path / "cut", resume=True, **kw)
    assert res.metrics["epochs"] == 3
    assert_same_run(tmp_path / "full", tmp_path / "cut")


def test_resume_of_a_finished_run_changes_nothing(tmp_path) -> None:
    ds = get_dataset("cifar10-mini").subset(32, 16)
    config = resolve_config(TrainConfig, preset="tiny", values={"epochs": 1, "batch_size": 16})
    a = train_arch(tiny_resnet(), ds, out=tmp_path / "r", config=config, progress=False)
    b = train_arch(tiny_resnet(), ds, out=tmp_path / "r", config=config, progress=False, resume=True)
    assert a.metrics["test_top1"] == b.metrics["test_top1"]
    assert len(metrics(tmp_path / "r")) == 1


# ---- real processes -------------------------------------------------------------------------------

def _npz(path: Path, n_per_class: int = 6, n_test_per_class: int = 2) -> Path:
    ds = get_dataset("cifar10-mini")
    def pick(split, k):
        idx = torch.cat([torch.nonzero(split.y == c).flatten()[:k] for c in range(10)])
        return split.x[idx].permute(0, 2, 3, 1).numpy(), split.y[idx].numpy()
    xtr, ytr = pick(ds.train, n_per_class)
    xte, yte = pick(ds.test, n_test_per_class)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return path


def nas(*args: str, env: dict | None = None, check: bool = True, **kw) -> subprocess.CompletedProcess:
    e = {**os.environ, "OMP_NUM_THREADS": "1"}
    e.pop("NAS_INTERRUPT_AFTER_EPOCH", None)
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "nas_common.cli", *args], env=e, capture_output=True, text=True,
                       timeout=600, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"nas {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    save_arch(tiny_resnet(), d / "arch.json")
    data = _npz(d / "data.npz")
    common = [str(d / "arch.json"), "--dataset", f"npz:{data}", "--preset", "tiny", "--epochs", "3",
              "--batch-size", "20", "--seed", "1", "--no-progress"]
    nas("train", *common, "--out", str(d / "full"))
    return d, common


@pytest.mark.slow
def test_killed_by_the_interrupt_hook_then_resumed(setup) -> None:
    d, common = setup
    out = str(d / "hook")
    p = nas("train", *common, "--out", out, env={"NAS_INTERRUPT_AFTER_EPOCH": "1"}, check=False)
    assert p.returncode == 75, p.stderr
    assert torch.load(Path(out) / "checkpoints/last.pt", weights_only=False)["epoch"] == 1
    assert not (Path(out) / "model.pt").exists() and not (Path(out) / "result.json").exists()
    nas("train", *common, "--out", out, "--resume")
    assert_same_run(d / "full", Path(out))


@pytest.mark.slow
def test_sigkill_mid_training_then_resumed(setup) -> None:
    d, common = setup
    out = Path(d / "killed")
    e = {**os.environ, "OMP_NUM_THREADS": "1"}
    e.pop("NAS_INTERRUPT_AFTER_EPOCH", None)
    proc = subprocess.Popen([sys.executable, "-m", "nas_common.cli", "train", *common, "--out", str(out)], env=e,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (out / "checkpoints" / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.pt").exists()
    nas("train", *common, "--out", str(out), "--resume")
    assert_same_run(d / "full", out)
