"""TAS's up-front refusals (`TASSearch.check`): raised before the run directory exists, in-process and
through the CLI (one stderr line, exit 2, no --out written); and the training presets it registers."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nas_common import Budget, BudgetError, ConfigError, NASError, Task, get_dataset, resolve_config
from nas_common.cli import main
from nas_common.search import run_search
from tas_nas import TASConfig
from tas_nas.search import reachable_macs

MICRO = {"base": "resnet20", "epochs": 1, "batch_size": 16, "max_steps_per_epoch": 1}


def _task(budget: Budget | None = None, n: int = 64) -> Task:
    return Task(get_dataset("cifar10-mini").subset(n, 16), seed=0, budget=budget or Budget())


def _lowest() -> tuple[float, float]:
    return reachable_macs(resolve_config(TASConfig, preset="tiny", overrides=MICRO), _task())


@pytest.mark.parametrize(("budget", "overrides", "error", "match"), [
    ("low-budget", {}, BudgetError, r"--budget-macs .* is below the cheapest network .* give --budget-macs \d+"),
    (None, {"prune_ratio": 0.01}, BudgetError, r"prune_ratio=0.01 .* use --prune-ratio 0\.\d\d or more"),
    ("params", {}, NASError, "params"),
    (None, {"batch_size": 40}, ConfigError, r"batch_size=40 is more than the \d+ images .* use -o batch_size="),
])
def test_refusals_come_before_anything_is_written(tmp_path: Path, budget: str | None, overrides: dict,
                                                   error: type[Exception], match: str) -> None:
    _, lowest = _lowest()
    b = {"low-budget": Budget(macs=0.9 * lowest), "params": Budget(params=1e5), None: None}[budget]
    with pytest.raises(error, match=match) as e:
        run_search("tas", _task(b), out=tmp_path / "r", preset="tiny", overrides={**MICRO, **overrides},
                   progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "r").exists()


def test_the_cheapest_network_is_reachable_and_just_below_is_not(tmp_path: Path) -> None:
    """The refusal's threshold is the narrowest network itself: a target at it searches, 1% below refuses."""
    _, lowest = _lowest()
    with pytest.raises(BudgetError):
        run_search("tas", _task(Budget(macs=0.99 * lowest)), out=tmp_path / "no", preset="tiny", overrides=MICRO,
                   progress=False)
    run_search("tas", _task(Budget(macs=lowest)), out=tmp_path / "yes", preset="tiny", overrides=MICRO,
               progress=False)
    assert (tmp_path / "yes" / "arch.json").exists()


@pytest.mark.parametrize("args", [
    ["--prune-ratio", "0.01"],
    ["--budget-macs", "1000"],
    ["--budget-params", "1e5"],
    ["-o", "batch_size=100000"],
])
def test_cli_refusals_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
                                          ) -> None:
    out = tmp_path / "r"
    assert main(["search", "tas", "--preset", "tiny", "--device", "cpu", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert not out.exists()


def test_training_presets_are_registered_by_the_spaces_entry_point() -> None:
    """A fresh process that never imports tas_nas gets `tas` and `tas-imagenet` from nas_common's preset
    registry (through the `nas_common.spaces` entry point, tas_nas.archs), with TAS's recipes."""
    code = ("import sys\n"
            "from nas_common.train.config import TRAIN_PRESETS\n"
            "v = TRAIN_PRESETS.get('tas-imagenet')\n"
            "assert v == {'epochs': 125, 'batch_size': 256, 'warmup_epochs': 5, 'weight_decay': 1e-4}, v\n"
            "assert TRAIN_PRESETS.get('tas') == {'epochs': 300, 'batch_size': 256, 'warmup_epochs': 5}\n"
            "assert 'tas_nas.archs' in sys.modules\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
