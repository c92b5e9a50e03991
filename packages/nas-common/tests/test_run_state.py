"""The one search state: `Run.save_state` / `Run.resume` restore components by name with every RNG
state, and `Run.open` reads a finished run back with one-line errors."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nas_common import Task, get_dataset
from nas_common.errors import ConfigError, RunError
from nas_common.runs import CHECKPOINT_FORMAT, MARKER, Run, RunInterrupted, seed_everything

RECORD = {"kind": "search", "method": "m", "dataset": "cifar10-mini", "seed": 0, "config": {"epochs": 2}}


def components(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(seed)
    net = nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    return net, opt, torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)


def one_epoch(net: nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler) -> None:
    x = torch.randn(4, 3)  # from the global RNG: a resume that lost the RNG state diverges
    loss = net(x).pow(2).sum() + random.random() + float(np.random.rand())
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def search(out: Path, epochs: int = 3, interrupt_after: int | None = None, resume: bool = False) -> dict:
    run = Run.create(out, RECORD, resume=resume, interrupt_after=interrupt_after, progress=False)
    seed_everything(0)
    net, opt, sched = components()
    code = nn.Parameter(torch.zeros(2))
    start, extra = 0, {"history": []}
    got = run.resume(model={"net": net}, optimizers={"w": opt}, schedulers={"w": sched})
    if got is not None:
        start, extra = got.epoch, got.extra
        code.data.copy_(extra["code"])
    for epoch in range(start, epochs):
        one_epoch(net, opt, sched)
        with torch.no_grad():
            code += torch.randn(2)
        extra = {"history": [*extra["history"], epoch], "code": code.detach().clone()}
        run.log(epoch + 1, loss=float(code.sum()))
        run.save_state(epoch + 1, model={"net": net}, optimizers={"w": opt}, schedulers={"w": sched}, extra=extra)
    run.close()
    return {"net": {k: v.clone() for k, v in net.state_dict().items()}, "lr": sched.get_last_lr(), "code": code,
            "history": extra["history"], "metrics": run.metrics(), "next": torch.rand(1)}


def test_resumed_state_equals_uninterrupted(tmp_path: Path) -> None:
    full = search(tmp_path / "full")
    with pytest.raises(RunInterrupted):
        search(tmp_path / "cut", interrupt_after=1)
    # a record logged after the checkpoint (a kill between log and save) is dropped on resume
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 2, "loss": 99.0}) + "\n")
    again = search(tmp_path / "cut", resume=True)
    for k in full["net"]:
        torch.testing.assert_close(again["net"][k], full["net"][k], rtol=0, atol=0)
    assert again["lr"] == full["lr"] and again["history"] == full["history"] == [0, 1, 2]
    assert torch.equal(again["code"], full["code"])
    assert again["metrics"] == full["metrics"]
    assert torch.equal(again["next"], full["next"])  # the global RNG continued where it stopped


def test_checkpoint_schema_is_versioned_and_named(tmp_path: Path) -> None:
    with pytest.raises(RunInterrupted):
        search(tmp_path / "r", interrupt_after=1)
    ck = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=False)
    assert ck["format"] == CHECKPOINT_FORMAT and ck["epoch"] == 1 and ck["log_step"] == 1
    assert set(ck["model"]) == {"net"} and set(ck["optimizers"]) == {"w"} and set(ck["schedulers"]) == {"w"}
    assert ck["record"]["method"] == "m" and ck["world_size"] == 1 and len(ck["rng"]) == 1
    assert {"python", "numpy", "torch"} <= set(ck["rng"][0]) and "torch" in ck["versions"]


def test_resume_with_a_component_the_checkpoint_lacks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunInterrupted):
        search(tmp_path / "r", interrupt_after=1)
    run = Run.create(tmp_path / "r", RECORD, resume=True, progress=False)
    net, opt, _ = components()
    with pytest.raises(RunError, match="has no model policy") as e:
        run.resume(model={"net": net, "policy": nn.Linear(1, 1)}, optimizers={"w": opt})
    assert "\n" not in str(e.value)
    with pytest.raises(RunError, match="model 'net' does not fit"):
        run.resume(model={"net": nn.Linear(5, 2)})


def task(seed: int = 0) -> Task:
    return Task(get_dataset("cifar10-mini").subset(8, 8), seed=seed)


def test_finished_run_reads_back(tmp_path: Path) -> None:
    search(tmp_path / "run", epochs=2)
    run = Run.open(tmp_path / "run", method="m", task=task())
    assert run.record["config"] == {"epochs": 2} and run.record["seed"] == 0
    net = nn.Linear(3, 2)
    extra = run.load_final(2, model={"net": net})
    assert extra["history"] == [0, 1]
    saved = torch.load(run.checkpoint_path, weights_only=False)["model"]["net"]
    torch.testing.assert_close(net.weight, saved["weight"])
    assert Run.open(tmp_path / "run", method="m", task=task(seed=5), same_seed=False).record["method"] == "m"


@pytest.mark.parametrize("case, error, match", [
    ("no dir", RunError, "does not exist: give the --out directory of a finished `nas search m` run"),
    ("missing", RunError, "config.toml does not exist: give the --out directory of a finished `nas search m` run"),
    ("other method", RunError, "holds a 'other' run, not a `nas search m` run"),
    ("other seed", ConfigError, "searched with seed 3 but the task has seed 0.*seed=3"),
    ("unfinished", RunError, "stopped after epoch 1 of 2: finish it with .* --resume"),
    ("missing key", RunError, "holds no code: it is not a checkpoint of a `nas search m` run"),
    ("garbage", RunError, "cannot read checkpoint .*last.pt"),
    ("binary config", RunError, "config.toml is not a text file"),
])
def test_unusable_runs_are_refused_in_one_line(tmp_path: Path, case: str, error: type, match: str) -> None:
    run = tmp_path / "run"
    if case == "missing":
        run.mkdir()
    elif case == "other method":
        Run.create(run, {**RECORD, "method": "other"}, progress=False)
    elif case == "other seed":
        Run.create(run, {**RECORD, "seed": 3}, progress=False)
    elif case in ("unfinished", "missing key", "garbage"):
        with pytest.raises(RunInterrupted):
            search(run, epochs=2, interrupt_after=1 if case == "unfinished" else 2)
        if case == "garbage":
            (run / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    elif case == "binary config":
        run.mkdir()
        (run / "config.toml").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(error, match=match) as e:
        opened = Run.open(run, method="m", task=task())
        opened.final_state(2, keys=("net", "code") if case == "missing key" else ("net",))
    assert "\n" not in str(e.value)


def test_overwrite_replaces_only_a_marked_run(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "checkpoints" / "precious.pt").write_bytes(b"user data")
    (mine / "config.toml").write_text("mine = 1\n")
    with pytest.raises(RunError, match=f"not a nas run directory .*{MARKER}"):
        Run.create(mine, RECORD, overwrite=True)
    assert (mine / "checkpoints" / "precious.pt").read_bytes() == b"user data"
    assert (mine / "config.toml").read_text() == "mine = 1\n"
    ours = tmp_path / "ours"
    search(ours, epochs=1)
    (ours / "notes.txt").write_text("keep me")
    Run.create(ours, RECORD, overwrite=True)
    assert not (ours / "checkpoints").exists() and (ours / MARKER).is_file()
    assert (ours / "notes.txt").read_text() == "keep me"  # not something a run writes


@pytest.mark.parametrize("kw, match", [({"resume": True, "overwrite": True}, "contradict"),
                                       ({"out": ""}, "--out is empty"), ({"out": "file/sub"}, "is a file")])
def test_bad_output_requests_write_nothing(tmp_path: Path, kw: dict, match: str) -> None:
    (tmp_path / "file").write_text("x")
    out = kw.pop("out", str(tmp_path / "r"))
    out = str(tmp_path / out) if out and not out.startswith("/") else out
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(RunError, match=match):
        Run.create(out, RECORD, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
