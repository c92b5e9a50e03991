"""Run directories as a timm or Lightning user expects them: files honour the umask, best.pt beside
last.pt with keep-k, one metric naming scheme with grouped TensorBoard tags and hparams, one log line
per epoch, a documented progress switch, and the Trainer's schedule from torch's scheduler classes."""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
import torch

from nas_common import Arch, Run, get_dataset
from nas_common.log import progress_enabled
from nas_common.runs import canonical_metric
from nas_common.train import TrainConfig, lr_factor, train_arch
from nas_common.train.trainer import make_scheduler


def tiny_resnet() -> Arch:
    spec = {"kind": "cifar", "block": "basic", "stem": 4, "depths": [1, 1, 1],
            "widths": [[[4, 4]], [[8, 8]], [[8, 8]]]}
    return Arch("resnet", spec, {"num_classes": 10, "input": [3, 32, 32]})


@pytest.fixture(scope="module")
def mini():
    return get_dataset("cifar10-mini").subset(40, 20)


def test_run_files_honour_a_022_umask(tmp_path: Path, mini) -> None:
    old = os.umask(0o022)
    try:
        cfg = TrainConfig(epochs=2, batch_size=20, lr=0.05)
        train_arch(tiny_resnet(), mini, out=tmp_path / "r", config=cfg, progress=False, keep_best=2)
    finally:
        os.umask(old)
    d = tmp_path / "r"
    files = [".nas-run", "config.toml", "arch.json", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt",
             "model.pt", "result.json"]
    for f in files:
        assert stat.S_IMODE((d / f).stat().st_mode) == 0o644, f
    assert list((d / "checkpoints").glob("epoch-*.pt"))  # keep-best 2 keeps the epoch files too


def _run(tmp_path: Path, values: list[float], keep: int, mode: str = "max") -> Run:
    run = Run.create(tmp_path / "r", {"kind": "search", "method": "toy", "config": {"lr": 0.1}}, progress=False)
    run.track_best("valid_top1", mode, keep=keep)
    for epoch, v in enumerate(values, start=1):
        run.log(epoch, train_loss=1.0 / epoch, valid_top1=v)
        run.save_state(epoch, extra={"value": v})
    return run


def test_best_checkpoint_and_keep_k(tmp_path: Path) -> None:
    run = _run(tmp_path, [1.0, 3.0, 2.0, 0.5], keep=2)
    ck = tmp_path / "r" / "checkpoints"
    assert torch.load(ck / "best.pt", weights_only=False)["extra"]["value"] == 3.0
    assert torch.load(ck / "last.pt", weights_only=False)["extra"]["value"] == 0.5
    assert sorted(p.name for p in ck.glob("epoch-*.pt")) == ["epoch-0002.pt", "epoch-0003.pt"]
    assert torch.load(ck / "epoch-0003.pt", weights_only=False)["extra"]["value"] == 2.0
    assert [b["epoch"] for b in run.best] == [2, 3]
    saved = torch.load(ck / "last.pt", weights_only=False)["best"]
    assert [b["epoch"] for b in saved] == [2, 3]  # kept in the checkpoint, so a resume continues the ranking
    again = Run.create(tmp_path / "r", None, resume=True, progress=False)
    again.track_best("valid/top1", keep=2)
    again.resume()
    assert [b["epoch"] for b in again.best] == [2, 3]


def test_best_by_a_metric_to_minimise_and_keep_zero(tmp_path: Path) -> None:
    _run(tmp_path / "a", [3.0, 1.0, 2.0], keep=1, mode="min")
    assert torch.load(tmp_path / "a" / "r" / "checkpoints" / "best.pt", weights_only=False)["extra"]["value"] == 1.0
    assert not list((tmp_path / "a" / "r" / "checkpoints").glob("epoch-*"))
    _run(tmp_path / "b", [3.0, 1.0], keep=0)
    assert not (tmp_path / "b" / "r" / "checkpoints" / "best.pt").exists()


@pytest.mark.parametrize("key, kind, want", [
    ("train_loss", "search", "train/loss"), ("val_acc", "search", "valid/acc"), ("valid_top1", None, "valid/top1"),
    ("test_top5", "train", "test/top5"), ("lr", "train", "train/lr"), ("frozen", "search", "search/frozen"),
    ("sampling/best", "search", "sampling/best"),
])
def test_canonical_metric_names(key: str, kind: str | None, want: str) -> None:
    assert canonical_metric(key, kind) == want


def test_tensorboard_tags_are_grouped_and_hparams_recorded(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _run(tmp_path, [1.0, 2.0], keep=1)
    run.write_result({"metrics": {"valid_top1": 2.0, "train_loss": 0.5}})
    run.close()
    acc = EventAccumulator(str(tmp_path / "r" / "tb"))
    acc.Reload()
    assert {"train/loss", "valid/top1"} <= set(acc.Tags()["scalars"])
    hp = EventAccumulator(str(tmp_path / "r" / "tb" / "hparams"))
    hp.Reload()
    assert "hparam/valid/top1" in hp.Tags()["scalars"]
    assert any("hparams" in str(t) for t in hp.Tags().get("tensors", [])) or hp.summary_metadata


def test_every_epoch_logs_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="nas_common"):
        _run(tmp_path, [1.0, 2.0, 3.0], keep=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "nas_common.run"]
    assert len(lines) == 3 and all("valid_top1" in ln for ln in lines)
    assert " step 3:" in lines[-1]


def test_the_library_logs_nothing_by_default() -> None:
    handlers = logging.getLogger("nas_common").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


@pytest.mark.parametrize("env, tty, want", [("1", False, True), ("0", True, False), ("", True, True),
                                            ("", False, False)])
def test_progress_switch(monkeypatch: pytest.MonkeyPatch, env: str, tty: bool, want: bool) -> None:
    class Stream:
        def isatty(self) -> bool:
            return tty

    monkeypatch.setenv("NAS_PROGRESS", env)
    assert progress_enabled(True, Stream()) is want
    assert progress_enabled(False, Stream()) is False


@pytest.mark.parametrize("kw", [{"epochs": 10}, {"epochs": 10, "warmup_epochs": 3, "lr_min": 1e-3},
                                {"epochs": 7, "warmup_epochs": 1},
                                {"epochs": 10, "schedule": "step", "milestones": (4, 7), "warmup_epochs": 2},
                                {"epochs": 5, "schedule": "constant", "warmup_epochs": 2}])
def test_the_schedule_comes_from_torchs_scheduler_classes(kw: dict) -> None:
    c = TrainConfig(**kw)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=c.lr)
    sched = make_scheduler(opt, c)
    assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
    got = []
    for _ in range(c.epochs):
        got.append(opt.param_groups[0]["lr"] / c.lr)
        opt.step()
        sched.step()
    assert got == pytest.approx([lr_factor(c, e) for e in range(c.epochs)], abs=1e-12)
