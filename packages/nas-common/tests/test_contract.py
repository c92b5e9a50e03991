"""The method contract: SearchMethod declarations, check() before anything is written, budgets on any
named cost, the method registry, the method's own CLI options, and the host-sync detector."""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import torch

from nas_common import Arch, Budget, CliOption, Config, SearchMethod, SearchResult, Task, get_dataset
from nas_common.cli import main
from nas_common.errors import BudgetError, ConfigError, RegistryError
from nas_common.registry import METHODS, MethodRegistry, register_method, unregister_method
from nas_common.search import run_search
from nas_common.syncs import HostSyncDetector, detect_host_syncs


@dataclass(frozen=True)
class ToyConfig(Config):
    epochs: int = 2
    width: int = 4
    PRESETS = {"paper": {}, "tiny": {"epochs": 1}}


class Toy(SearchMethod):
    """A method whose search runs two marked steps on a linear model and picks a ResNet width."""

    name = "toy-contract"
    config_cls = ToyConfig
    spaces = ("resnet",)
    budget_kinds = ("macs",)
    cli_options = (CliOption("--width", key="width", help="the stem width"),)
    sync_inside = False

    def check(self, task: Task, config: ToyConfig) -> None:
        super().check(task, config)
        if task.budget.macs is not None and task.budget.macs < 1e3:
            raise BudgetError(f"macs budget {task.budget.macs:g} is below the cheapest network (1e3)")

    def search(self, task: Task, config: ToyConfig, run: Any) -> SearchResult:
        ctx = task.context
        w = torch.nn.Parameter(torch.zeros(3))
        for _ in range(2):
            with ctx.step():
                loss = (w - 1).pow(2).sum()
                loss.backward()
                if self.sync_inside:
                    float(loss.detach())
        run.save_state(config.epochs, extra={"w": w.detach()})
        return SearchResult(self.name, state={"w": w.detach().clone(), "width": config.width})

    def derive(self, result: SearchResult) -> Arch:
        c = int(result.state["width"])
        spec = {"kind": "cifar", "block": "basic", "stem": c, "depths": [1, 1, 1],
                "widths": [[[c, c]], [[c, c]], [[c, c]]]}
        return Arch("resnet", spec, {"num_classes": 10, "input": [3, 32, 32]})


@pytest.fixture
def toy():
    register_method(Toy.name, Toy)
    yield Toy
    unregister_method(Toy.name)


def task(budget: Budget | None = None) -> Task:
    return Task(get_dataset("cifar10-mini").subset(8, 8), budget=budget or Budget())


# ---- budgets -------------------------------------------------------------------------------------
def test_budget_takes_any_registered_cost_by_key() -> None:
    b = Budget(macs=4e7, limits={"distributed:2": 6, "latency": 0.01})
    assert b.macs == 4e7 and b.params is None
    assert dict(b.limits) == {"distributed:2": 6.0, "latency:cpu": 0.01, "macs": 4e7}
    assert b.kinds == ("distributed", "latency", "macs") and b.get("distributed") == ("distributed:2", 6.0)
    assert b.violations({"macs": 5e7, "distributed:2": 6.0}) == ["macs 5e+07 > budget 4e+07"]
    assert pickle.loads(pickle.dumps(b)) == b and Budget.from_dict(b.to_dict()) == b
    assert Budget.parse(["macs=2e7", "distributed:4=3"]) == Budget(macs=2e7, limits={"distributed:4": 3})


@pytest.mark.parametrize("kwargs, match", [
    ({"macs": "20e6"}, "must be a positive number"), ({"macs": -1}, "must be a positive number"),
    ({"macs": True}, "must be a positive number"), ({"limits": {"flops": 1}}, "unknown cost 'flops'"),
    ({"limits": {"distributed": 1}}, "needs its number of workers"), ({"limits": {"macs:2": 1}}, "takes no argument"),
    ({"limits": {"distributed:0": 1}}, "positive integer"), ({"limits": [("macs", 1)]}, "takes a mapping"),
])
def test_bad_budgets_say_what_to_write(kwargs: dict, match: str) -> None:
    with pytest.raises(BudgetError, match=match) as e:
        Budget(**kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs, match", [({"dataset": "cifar10-mini"}, "get_dataset"), ({"seed": "0"}, "seed"),
                                           ({"seed": -1}, "seed"), ({"budget": {"macs": 1}}, "Budget")])
def test_task_validates_its_fields(kwargs: dict, match: str) -> None:
    base = {"dataset": get_dataset("cifar10-mini").subset(4, 4)}
    with pytest.raises(ConfigError, match=match):
        Task(**{**base, **kwargs})


# ---- check() and run_search ------------------------------------------------------------------------
def test_unsupported_budget_kind_is_refused_naming_the_methods_that_take_it(toy, tmp_path: Path) -> None:
    with pytest.raises(BudgetError, match="toy-contract cannot honour a params budget.*takes a budget on macs"):
        run_search(Toy, task(Budget(params=1e5)), out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_method_refusal_comes_before_the_run_directory(toy, tmp_path: Path) -> None:
    with pytest.raises(BudgetError, match="below the cheapest"):
        run_search(Toy, task(Budget(macs=10)), out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()
    run_search(Toy, task(), out=tmp_path / "r", progress=False)  # the corrected command then works
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert len(result["rank_state_digests"]) == 1 and len(result["rank_arch_digests"]) == 1


def test_budgeted_costs_are_counted_into_the_arch(toy, tmp_path: Path) -> None:
    _, arch = run_search(Toy, task(Budget(macs=1e9)), out=tmp_path / "r", progress=False)
    assert arch.costs["macs"] > 0 and arch.costs["params"] > 0


def test_validate_class_names_what_is_missing() -> None:
    class Half(SearchMethod):
        name = "half"

    with pytest.raises(TypeError, match="config_cls.*implement `search` and `derive`"):
        Half.validate_class()
    assert Toy.ranks() is False


# ---- the registry -----------------------------------------------------------------------------------
def test_duplicate_entry_points_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [metadata.EntryPoint("same", "a_pkg:A", "nas_common.methods"),
           metadata.EntryPoint("same", "b_pkg:B", "nas_common.methods")]
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: eps)
    reg = MethodRegistry()
    with pytest.raises(RegistryError, match="'same' is registered twice"):
        reg.names()


def test_an_entry_point_that_is_not_a_search_method_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_EXTRA_METHODS", "bogus=json:JSONDecoder")
    with pytest.raises(RegistryError, match="must be a nas_common.SearchMethod subclass"):
        METHODS.get("bogus")


def test_installed_methods_declare_the_contract() -> None:
    for name in METHODS.names():
        cls = METHODS.get(name)
        assert issubclass(cls, SearchMethod) and cls.name == name
        cls.validate_class()


# ---- the CLI ------------------------------------------------------------------------------------------
def test_method_options_come_from_the_method(toy, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["search", "toy-contract", "--help"])
    assert "--width" in capsys.readouterr().out
    assert main(["search", "toy-contract", "--width", "6", "--preset", "tiny", "--out", str(tmp_path / "r"),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["arch"]["spec"]["stem"] == 6
    with pytest.raises(SystemExit):  # another method's flag is not this one's
        main(["search", "toy-contract", "--input-arch", "darts-v2", "--out", str(tmp_path / "s")])
    assert not (tmp_path / "s").exists()


def test_nas_list_shows_versions_spaces_budgets_and_ranking(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for name, m in info["methods"].items():
        assert {"version", "spaces", "budget_kinds", "ranks", "presets"} <= set(m), name
    assert {"macs", "params", "distributed", "latency", "memory"} <= set(info["costs"])


# ---- the host-sync detector ------------------------------------------------------------------------------
@pytest.mark.parametrize("op, name", [
    (lambda t: t.sum().item(), "aten._local_scalar_dense"), (lambda t: bool(t.sum() > 0), "aten._local_scalar_dense"),
    (lambda t: t.tolist(), "Tensor.tolist"), (lambda t: t.nonzero(), "aten.nonzero"),
    (lambda t: t[t > 0], "aten.index"), (lambda t: torch.tensor([1.0, 2.0]), "aten.lift_fresh"),
    (lambda t: torch.multinomial(t.abs() + 1, 2), "aten.multinomial"), (lambda t: t.cpu(), "Tensor.cpu"),
])
def test_detector_catches_syncs(op: Any, name: str) -> None:
    det = HostSyncDetector()
    with det:
        op(torch.randn(5))
    assert name in det.found


def test_detector_passes_sync_free_steps_and_counts_them(toy, tmp_path: Path) -> None:
    t = torch.randn(5)
    det = HostSyncDetector()
    with det:
        torch.where(t > 0, t, 0.0).topk(2).values.softmax(0)
    assert not det.found
    with detect_host_syncs() as report:
        run_search(Toy, task(), out=tmp_path / "ok", progress=False)
    assert report == {"steps": 2, "found": {}}
    Toy.sync_inside = True
    try:
        with detect_host_syncs() as report:
            run_search(Toy, task(), out=tmp_path / "bad", progress=False)
    finally:
        Toy.sync_inside = False
    assert report["found"] == {"aten._local_scalar_dense": 2}
