"""Conformance tests every method package subclasses (DESIGN.md section 6).

    class TestISTAConformance(SearchMethodTests):
        method = "ista-nas"
        micro = {"layers": 2, "C": 4, "epochs": 2, "batch_size": 16}

Each test runs the method at micro scale (a few cells, a few channels, 64 images: seconds). A subclass
may not weaken a standard test: overriding one fails `test_no_overrides` unless the override is
marked `pytest.mark.xfail(reason=...)`.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from .arch import Arch, load_arch, save_arch
from .config import list_presets
from .costs import count_macs, count_params
from .data import get_dataset, make_loader
from .methods import Budget, SearchResult, Task
from .registry import get_method
from .runs import RunInterrupted
from .search import run_search


class SearchMethodTests:
    """Subclass and set `method` and `micro`; optionally `budget` (a Budget the micro search must meet)."""

    method: ClassVar[str] = ""
    micro: ClassVar[dict[str, Any]] = {}
    preset: ClassVar[str] = "tiny"
    n_train: ClassVar[int] = 64
    n_test: ClassVar[int] = 32
    budget: ClassVar[Budget | None] = None
    budget_slack: ClassVar[float] = 0.0  # allowed relative excess over the budget (e.g. TAS's tolerance)
    resume_after: ClassVar[int] = 1  # epochs before the interruption in the resume test

    # ---- helpers ----------------------------------------------------------------------------------
    def task(self, seed: int = 0, budget: Budget | None = None) -> Task:
        ds = get_dataset("cifar10-mini").subset(self.n_train, self.n_test)
        return Task(dataset=ds, device=torch.device("cpu"), seed=seed, budget=budget or Budget())

    def search(self, out: Path, seed: int = 0, budget: Budget | None = None, **kw: Any) -> tuple[SearchResult, Arch]:
        return run_search(self.method, self.task(seed, budget), out=out, preset=self.preset,
                          overrides=dict(self.micro), progress=False, **kw)

    @pytest.fixture(scope="class")
    @classmethod
    def searched(cls, tmp_path_factory: pytest.TempPathFactory) -> tuple[SearchResult, Arch, Path]:
        """One micro search shared by the tests of a class (a fresh instance does the work)."""
        out = tmp_path_factory.mktemp("search")
        result, arch = cls().search(out / "run")
        return result, arch, out / "run"

    # ---- the standard tests ------------------------------------------------------------------------
    def test_registered_with_presets(self) -> None:
        cls = get_method(self.method)
        assert cls.name == self.method
        presets = list_presets(cls.config_cls)
        assert "paper" in presets and "tiny" in presets, presets

    def test_search_writes_a_valid_arch(self, searched: tuple[SearchResult, Arch, Path]) -> None:
        result, arch, run_dir = searched
        assert isinstance(result, SearchResult)
        loaded = load_arch(run_dir / "arch.json")
        assert loaded == arch
        assert loaded.method == self.method
        assert (run_dir / "result.json").exists() and (run_dir / "config.toml").exists()
        model = arch.build()
        assert arch.costs["macs"] == pytest.approx(count_macs(model, tuple(arch.net["input"])), rel=1e-6)
        assert arch.costs["params"] == pytest.approx(count_params(model), rel=1e-6)

    def test_derived_arch_trains_a_step(self, searched: tuple[SearchResult, Arch, Path]) -> None:
        _, arch, _ = searched
        model = arch.build().train()
        ds = get_dataset("cifar10-mini").subset(16, 8)
        x, y = next(iter(make_loader(ds.train, 8, train=True)))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        assert logits.shape == (8, arch.net["num_classes"])
        loss = torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        assert torch.isfinite(loss)
        assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=False))

    def test_export_load_roundtrip(self, searched: tuple[SearchResult, Arch, Path], tmp_path: Path) -> None:
        _, arch, _ = searched
        path = save_arch(arch, tmp_path / "a.json")
        again = load_arch(path)
        assert again == arch and again.digest == arch.digest
        m1, m2 = arch.build().eval(), again.build().eval()
        m2.load_state_dict(m1.state_dict())
        x = torch.randn(2, *arch.net["input"])
        torch.testing.assert_close(m1(x), m2(x))

    def test_same_seed_same_arch(self, searched: tuple[SearchResult, Arch, Path], tmp_path: Path) -> None:
        _, arch, _ = searched
        _, again = self.search(tmp_path / "again")
        assert again == arch

    def test_resumed_search_equals_uninterrupted(self, searched: tuple[SearchResult, Arch, Path],
                                                 tmp_path: Path) -> None:
        result, arch, _ = searched
        out = tmp_path / "resumed"
        with pytest.raises(RunInterrupted):
            self.search(out, interrupt_after=self.resume_after)
        assert (out / "checkpoints" / "last.pt").exists()
        result2, arch2 = self.search(out, resume=True)
        assert arch2 == arch
        for key, value in result.state.items():
            other = result2.state[key]
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(other, value)

    def test_budget_holds(self, tmp_path: Path) -> None:
        if self.budget is None:
            pytest.skip("this method takes no budget")
        _, arch = self.search(tmp_path / "budget", budget=self.budget)
        for name, limit in self.budget.to_dict().items():
            assert arch.costs[name] <= limit * (1 + self.budget_slack), (name, arch.costs[name], limit)

    def test_not_pinned_to_a_device(self) -> None:
        module = inspect.getmodule(get_method(self.method))
        root = Path(module.__file__).parent
        pinned = re.compile(r"""["']cuda:\d["']|\.cuda\(\)""")
        bad = [f"{f.name}:{i + 1}" for f in root.rglob("*.py")
               for i, line in enumerate(f.read_text().splitlines()) if pinned.search(line)]
        assert not bad, f"hard-coded CUDA device in {bad}: take the device from the Task"

    @pytest.mark.gpu
    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    def test_search_runs_on_cuda(self, tmp_path: Path) -> None:
        task = self.task()
        task.device = torch.device("cuda")
        _, arch = run_search(self.method, task, out=tmp_path / "cuda", preset=self.preset,
                             overrides=dict(self.micro), progress=False)
        assert arch.build() is not None

    def test_no_overrides(self) -> None:
        """A subclass may not override a standard test without an xfail marker that says why."""
        for name, member in inspect.getmembers(SearchMethodTests, predicate=inspect.isfunction):
            if not name.startswith("test_"):
                continue
            mine = getattr(type(self), name)
            if mine is not member:
                marks = getattr(mine, "pytestmark", [])
                assert any(m.name == "xfail" and m.kwargs.get("reason") for m in marks), (
                    f"{type(self).__name__}.{name} overrides a standard test without xfail(reason=...)")
