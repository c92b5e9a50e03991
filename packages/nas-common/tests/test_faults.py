"""A kill at any point of writing a run directory leaves each file old or new, never partial, and
`--resume` then finishes the run exactly as an uninterrupted one.

Every writer of a run directory goes through nas_common.io. A forked child runs `nas train` (or a
`nas search`) with nas_common.io's `open` wrapped so that the process SIGKILLs itself after a chosen
number of bytes: one random point inside every file the run writes (.nas-run, config.toml, arch.json,
metrics.jsonl, checkpoints/last.pt, checkpoints/best.pt, model.pt, result.json). TensorBoard's event
files are append-only logs outside this promise (the checkpoint holds the state).
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import nas_common.io as nio
from nas_common import Arch, Config, SearchMethod, SearchResult, Task, get_dataset, load_arch, save_arch
from nas_common.cli import main
from nas_common.registry import register_method, unregister_method

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")]

TMP = re.compile(r"^\.(?P<name>.+)\.[^.]+\.tmp$")  # nas_common.io's temporary names: .NAME.XXXX.tmp


def tiny_resnet() -> Arch:
    spec = {"kind": "cifar", "block": "basic", "stem": 4, "depths": [1, 1, 1],
            "widths": [[[4, 4]], [[8, 8]], [[8, 8]]]}
    return Arch("resnet", spec, {"num_classes": 10, "input": [3, 32, 32]})


class _Killer:
    """A file whose writes count bytes into `state` and SIGKILL the process at byte `state['kill_at']`
    (after writing the bytes before it: a partial write, as a real kill leaves)."""

    def __init__(self, f: Any, path: str, state: dict) -> None:
        self._f, self._path, self._state = f, path, state

    def write(self, data: Any) -> int:
        b = data.encode() if isinstance(data, str) else bytes(data)
        s = self._state
        start = s["written"]
        s["log"].append((self._path, start, start + len(b)))
        kill_at = s.get("kill_at")
        if kill_at is not None and start <= kill_at < start + len(b):
            cut = kill_at - start
            self._f.write(data[:cut])
            self._f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        s["written"] = start + len(b)
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _Killer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()


def in_child(argv: list[str], kill_at: int | None, log_file: Path | None = None) -> int:
    """Run `nas ARGV` in a forked child (killed at byte `kill_at` of its writes); returns the exit
    status (-9 when killed). With `log_file`, the child writes its (path, start, end) write log there."""
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            state: dict[str, Any] = {"written": 0, "log": [], "kill_at": kill_at}
            real_open = open

            def wrapped(path: Any, mode: str = "r", *a: Any, **k: Any) -> Any:
                f = real_open(path, mode, *a, **k)
                return _Killer(f, str(path), state) if any(c in mode for c in "wa") else f

            nio.open = wrapped  # nas_common.io resolves `open` in its module globals first
            code = main(argv)
            if log_file is not None:
                with real_open(log_file, "w") as f:
                    json.dump(state["log"], f)
        except BaseException:  # noqa: BLE001 - report through the exit status
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def destination(path: str) -> str:
    """The run file a write went to: a temporary `.last.pt.XXXX.tmp` counts as `last.pt`."""
    p = Path(path)
    m = TMP.match(p.name)
    return str(p.parent / m.group("name")) if m else str(p)


def check_complete(d: Path) -> None:
    """Every file of the run directory is whole: it parses or loads."""
    if (d / ".nas-run").exists():
        json.loads((d / ".nas-run").read_text())
    if (d / "config.toml").exists():
        tomllib.loads((d / "config.toml").read_text())
    if (d / "arch.json").exists():
        load_arch(d / "arch.json")
    if (d / "result.json").exists():
        json.loads((d / "result.json").read_text())
    for f in (d / "checkpoints").glob("*.pt") if (d / "checkpoints").exists() else []:
        assert torch.load(f, weights_only=False)["format"] == "nas-ckpt/2", f
    if (d / "model.pt").exists():
        assert torch.load(d / "model.pt", weights_only=True)["format"] == "nas-model/1"
    if (d / "metrics.jsonl").exists():
        lines = (d / "metrics.jsonl").read_text().splitlines()
        for ln in lines[:-1]:
            json.loads(ln)  # only a last line may be cut short (readers skip it; --resume rewrites it)


def final_state(d: Path) -> tuple[dict, dict]:
    result = json.loads((d / "result.json").read_text())
    weights = torch.load(d / "model.pt", weights_only=True)["state_dict"]
    return {k: result["metrics"][k] for k in ("epochs", "train_loss", "test_top1", "test_loss")}, weights


def kill_points(log: list, rng: random.Random) -> dict[str, int]:
    """One random byte offset inside the writes of each run file (by file name)."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for path, start, end in log:
        if end > start:
            spans.setdefault(Path(destination(path)).name, []).append((start, end))
    return {name: rng.randrange(*rng.choice(s)) for name, s in spans.items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("faults")
    ds = get_dataset("cifar10-mini")
    np.savez(d / "d.npz", x_train=ds.train.x[:40].permute(0, 2, 3, 1).numpy(), y_train=ds.train.y[:40].numpy(),
             x_test=ds.test.x[:20].permute(0, 2, 3, 1).numpy(), y_test=ds.test.y[:20].numpy())
    save_arch(tiny_resnet(), d / "arch.json")
    return d


def kill_then_resume(args: list[str], out: Path, at: Any, name: str) -> None:
    """Run `args` into `out`, SIGKILLed at write `at`; every file left must be whole; `--resume` must
    then finish the run, again leaving whole files."""
    assert in_child([*args, "--out", str(out)], at) == -signal.SIGKILL, name
    check_complete(out)
    assert in_child([*args, "--out", str(out), "--resume"], None) == 0, f"resume after a kill in {name}"
    check_complete(out)


def test_a_kill_while_writing_a_training_run_leaves_whole_files_and_resume_finishes(data: Path, tmp_path: Path
                                                                                    ) -> None:
    args = ["train", str(data / "arch.json"), "--dataset", f"npz:{data / 'd.npz'}", "--preset", "tiny",
            "--epochs", "2", "--batch-size", "20", "-q", "--keep-best", "2"]
    ref = tmp_path / "ref"
    assert in_child([*args, "--out", str(ref)], None, tmp_path / "log.json") == 0
    want = final_state(ref)
    points = kill_points(json.loads((tmp_path / "log.json").read_text()), random.Random(0))
    assert {".nas-run", "config.toml", "arch.json", "metrics.jsonl", "last.pt", "model.pt", "result.json"} <= \
        set(points), points
    for name, at in sorted(points.items()):
        out = tmp_path / f"kill-{name}"
        kill_then_resume(args, out, at, name)
        assert not list(out.rglob("*.tmp")), f"temporaries left after resuming ({name})"
        got = final_state(out)
        assert got[0] == want[0], name
        assert all(torch.equal(got[1][k], want[1][k]) for k in want[1]), f"weights differ after a kill in {name}"


# ---- a search run: the same writers through run_search ---------------------------------------------------
@dataclass(frozen=True)
class ToyConfig(Config):
    epochs: int = 2
    PRESETS = {"paper": {}, "tiny": {}}


class ResumableToy(SearchMethod):
    """Two epochs of SGD on a vector, checkpointed each epoch; its result also trains a model.pt."""

    name = "toy-faults"
    config_cls = ToyConfig
    spaces = ("resnet",)
    best_metric = "valid/score"

    def search(self, task: Task, config: ToyConfig, run: Any) -> SearchResult:
        w = torch.nn.Parameter(torch.zeros(64))
        opt = torch.optim.SGD([w], lr=0.1)
        got = run.resume(optimizers={"w": opt}, model={"w": torch.nn.ParameterList([w])})
        for epoch in range(got.epoch if got else 0, config.epochs):
            loss = (w - torch.randn(64)).pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.log(epoch + 1, train_loss=float(loss), valid_score=-float(loss))
            run.save_state(epoch + 1, optimizers={"w": opt}, model={"w": torch.nn.ParameterList([w])})
        model = tiny_resnet().build()
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(w.sum()))
        return SearchResult(self.name, state={"w": w.detach().clone()}, model=model)

    def derive(self, result: SearchResult) -> Arch:
        return tiny_resnet()


def test_a_kill_while_writing_a_search_run_leaves_whole_files_and_resume_finishes(tmp_path: Path) -> None:
    register_method(ResumableToy.name, ResumableToy)
    try:
        args = ["search", "toy-faults", "--preset", "tiny", "-q"]
        ref = tmp_path / "ref"
        assert in_child([*args, "--out", str(ref)], None, tmp_path / "log.json") == 0
        want_state = torch.load(ref / "checkpoints" / "last.pt", weights_only=False)["optimizers"]
        want_model = torch.load(ref / "model.pt", weights_only=True)["state_dict"]
        points = kill_points(json.loads((tmp_path / "log.json").read_text()), random.Random(1))
        assert {"config.toml", "last.pt", "best.pt", "arch.json", "model.pt", "result.json"} <= set(points) or \
            {"config.toml", "last.pt", "arch.json", "model.pt", "result.json"} <= set(points), points
        for name, at in sorted(points.items()):
            out = tmp_path / f"kill-{name}"
            kill_then_resume(args, out, at, name)
            got = torch.load(out / "checkpoints" / "last.pt", weights_only=False)["optimizers"]
            assert got.keys() == want_state.keys(), name
            model = torch.load(out / "model.pt", weights_only=True)["state_dict"]
            assert all(torch.equal(model[k], want_model[k]) for k in want_model), name
    finally:
        unregister_method(ResumableToy.name)
