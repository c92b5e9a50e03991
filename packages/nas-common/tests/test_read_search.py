"""Reading a finished search back: `read_search_record` and `load_final_checkpoint` (the ranking hooks')."""
from __future__ import annotations

from pathlib import Path

import pytest

from nas_common import Task, get_dataset
from nas_common.errors import ConfigError, RunError
from nas_common.runs import Run, load_final_checkpoint, read_search_record


def fake_search(out: Path, epoch: int = 2, method: str = "m", seed: int = 0) -> Path:
    run = Run.create(out, {"kind": "search", "method": method, "dataset": "cifar10-mini", "seed": seed,
                           "config": {"epochs": 2}}, progress=False)
    run.checkpoint({"net": {"w": 1.0}}, epoch=epoch)
    run.close()
    return out


def task(seed: int = 0) -> Task:
    return Task(get_dataset("cifar10-mini").subset(8, 8), seed=seed)


def test_finished_search_reads_back(tmp_path: Path) -> None:
    run = fake_search(tmp_path / "run")
    record = read_search_record(run, "m", task())
    assert record["config"] == {"epochs": 2} and record["seed"] == 0
    state = load_final_checkpoint(run, "m", record["config"]["epochs"], keys=("net",))
    assert state["epoch"] == 2 and state["net"] == {"w": 1.0}
    assert read_search_record(run, "m", task(seed=5), same_seed=False)["method"] == "m"


@pytest.mark.parametrize("case, error, match", [
    ("missing", RunError, "config.toml does not exist: give the --out directory of a finished `nas search m` run"),
    ("other method", RunError, "holds a 'other' run, not a `nas search m` run"),
    ("other seed", ConfigError, "searched with seed 3 but the task has seed 0.*seed=3"),
    ("unfinished", RunError, "stopped after epoch 1 of 2: finish it with `nas search m .* --resume`"),
    ("missing key", RunError, "is not a m search checkpoint"),
    ("garbage", RunError, "cannot read .*last.pt"),
])
def test_unusable_runs_are_refused_in_one_line(tmp_path: Path, case: str, error: type, match: str) -> None:
    run = tmp_path / "run"
    if case == "other method":
        fake_search(run, method="other")
    elif case == "other seed":
        fake_search(run, seed=3)
    elif case in ("unfinished", "missing key", "garbage"):
        fake_search(run, epoch=1 if case == "unfinished" else 2)
        if case == "garbage":
            (run / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(error, match=match) as e:
        read_search_record(run, "m", task())
        load_final_checkpoint(run, "m", 2, keys=("net", "code") if case == "missing key" else ("net",))
    assert "\n" not in str(e.value)
