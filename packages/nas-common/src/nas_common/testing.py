"""Conformance tests every method package subclasses, and the standard tests of every space.

    class TestISTAConformance(SearchMethodTests):
        method = "ista-nas"
        micro = {"layers": 2, "C": 4, "epochs": 2, "batch_size": 16}

Each test runs the method at micro scale (a few cells, a few channels, 64 images: seconds). What a
method declares decides what it must pass: a method with `budget_kinds` must set `budget` (a budget
the micro search meets), a method with a ranking hook gets the ranking test. A subclass may not
weaken a standard test: overriding one fails `test_no_overrides` unless the override is marked
`pytest.mark.xfail(reason=...)`.

`nas_common.syncs.HostSyncDetector` records the data-dependent ops (host-device syncs on CUDA)
dispatched inside the search steps a method marks with `SearchContext.step()`; it runs on the CPU, so
CI checks what a GPU would stall on. `SpaceTests` runs over every registered space.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import os
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from .arch import Arch, load_arch, save_arch
from .config import list_presets
from .context import STEP_OBSERVERS
from .costs import count_macs, count_params, list_costs
from .data import get_dataset, make_loader
from .errors import BudgetError
from .methods import Budget, SearchMethod, SearchResult, Task
from .registry import get_method
from .runs import RunInterrupted
from .search import run_search
from .spaces import get_space
from .syncs import SYNC_OPS, HostSyncDetector, detect_host_syncs


class SearchMethodTests:
    """Subclass and set `method` and `micro`; `budget` (a Budget the micro search must meet) when the
    method declares budget kinds."""

    method: ClassVar[str] = ""
    micro: ClassVar[dict[str, Any]] = {}
    preset: ClassVar[str] = "tiny"
    n_train: ClassVar[int] = 64
    n_test: ClassVar[int] = 32
    budget: ClassVar[Budget | None] = None
    budget_slack: ClassVar[float] = 0.0  # allowed relative excess over the budget (e.g. TAS's tolerance)
    resume_after: ClassVar[int] = 1  # epochs before the interruption in the resume test
    rank_samples: ClassVar[int] = 3  # architectures the ranking test asks the hook for
    # overrides for the no-host-sync test only: the configuration the method runs on an accelerator,
    # where it differs from its CPU one (e.g. an execution mode that reads on the host only on the CPU)
    accelerator_micro: ClassVar[dict[str, Any]] = {}

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
    def test_registered_as_a_search_method(self) -> None:
        cls = get_method(self.method)
        assert issubclass(cls, SearchMethod) and cls.name == self.method
        presets = list_presets(cls.config_cls)
        assert "paper" in presets and "tiny" in presets, presets
        assert cls.spaces, "declare the spaces the method's architectures are in"
        cls.validate_class()

    def test_search_writes_a_valid_arch(self, searched: tuple[SearchResult, Arch, Path]) -> None:
        result, arch, run_dir = searched
        assert isinstance(result, SearchResult)
        loaded = load_arch(run_dir / "arch.json")
        assert loaded == arch
        assert loaded.method == self.method and loaded.space in get_method(self.method).spaces
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
        assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))

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
        kinds = get_method(self.method).budget_kinds
        if not kinds:
            pytest.skip("this method declares no budget kinds")
        assert self.budget is not None and self.budget.is_set, (
            f"{self.method} declares budget kinds {kinds}: set `budget` to one the micro search must meet")
        assert set(self.budget.kinds) <= set(kinds), (self.budget.kinds, kinds)
        _, arch = self.search(tmp_path / "budget", budget=self.budget)
        for name, limit in self.budget.to_dict().items():
            assert arch.costs[name] <= limit * (1 + self.budget_slack), (name, arch.costs[name], limit)

    def test_an_unsupported_budget_is_refused_before_writing(self, tmp_path: Path) -> None:
        kinds = get_method(self.method).budget_kinds
        other = next((c for c in list_costs() if c not in kinds), None)
        if other is None:
            pytest.skip("the method takes a budget on every registered cost")
        key = f"{other}:2" if other == "distributed" else other
        out = tmp_path / "refused"
        with pytest.raises(BudgetError, match=f"cannot honour a {other} budget"):
            self.search(out, budget=Budget(limits={key: 1.0}))
        assert not out.exists(), "a refusal must come before the run directory is created"

    def test_ranking_hook(self, searched: tuple[SearchResult, Arch, Path]) -> None:
        cls = get_method(self.method)
        if not cls.ranks():
            pytest.skip("this method has no ranking hook")
        _, _, run_dir = searched
        pairs = cls().sample_and_score(run_dir, self.task(), self.rank_samples, seed=0)
        assert 1 <= len(pairs) <= self.rank_samples
        archs = [a for a, _ in pairs]
        assert len(set(archs)) == len(archs), "the hook returns distinct architectures"
        for arch, acc in pairs:
            assert isinstance(arch, Arch) and arch.space in cls.spaces
            assert 0.0 <= acc <= 1.0, acc
            assert arch.build() is not None
        again = cls().sample_and_score(run_dir, self.task(), self.rank_samples, seed=0)
        assert [(a, s) for a, s in again] == [(a, s) for a, s in pairs], "the hook is deterministic for a seed"

    def test_no_host_sync_in_a_search_step(self, tmp_path: Path) -> None:
        cls = get_method(self.method)
        allow = frozenset(cls.host_sync_allowlist)
        with detect_host_syncs(allow) as report:
            run_search(self.method, self.task(), out=tmp_path / "syncs", preset=self.preset,
                       overrides={**self.micro, **self.accelerator_micro}, progress=False)
        assert report["steps"] >= 2, (
            f"{self.method} marked {report['steps']} search step(s): wrap each step in `with ctx.step():`")
        assert not report["found"], (f"host-device syncs inside {self.method}'s search steps: {report['found']} "
                                     f"(move per-epoch decisions out of the step, or allow-list with a reason)")

    @pytest.mark.slow
    def test_two_process_search_agrees_with_rank_0(self, tmp_path: Path) -> None:
        out = tmp_path / "ddp"
        p = run_two_process_search(self.method, dict(self.micro), out, preset=self.preset,
                                   n_train=self.n_train, n_test=self.n_test)
        assert p.returncode == 0, f"torchrun failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        result = json.loads((out / "result.json").read_text())
        assert result["provenance"]["world_size"] == 2
        states, archs = result["rank_state_digests"], result["rank_arch_digests"]
        assert len(states) == 2 and len(set(states)) == 1, f"the ranks' architecture parameters differ: {states}"
        assert archs == [load_arch(out / "arch.json").digest] * 2, f"the ranks derived different archs: {archs}"
        # batch_size is the global batch (ctx.per_rank_batch): two ranks take as many steps as one process
        ranks = [json.loads((out / f".steps.rank{r}.json").read_text())["steps"] for r in (0, 1)]
        steps: list[int] = []
        task = Task(get_dataset("cifar10-mini").subset(self.n_train, self.n_test), device=torch.device("cpu"), seed=0)
        with STEP_OBSERVERS.observe(lambda: steps.append(1) or contextlib.nullcontext()):
            run_search(self.method, task, out=tmp_path / "one", preset=self.preset, overrides=dict(self.micro),
                       progress=False)
        assert ranks == [len(steps)] * 2, (
            f"{self.method} took {ranks} marked steps on 2 ranks but {len(steps)} in one process at the same "
            f"batch_size: batch_size must be the global batch (read ctx.per_rank_batch(config.batch_size))")

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


_TORCHRUN_SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from nas_common import Task, get_dataset
    from nas_common.search import run_search
    method, micro, out, preset = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    n_train, n_test = int(sys.argv[5]), int(sys.argv[6])
    torch.set_num_threads(1)
    task = Task(get_dataset("cifar10-mini").subset(n_train, n_test), device=torch.device("cpu"), seed=0)
    from nas_common import dist
    from nas_common.context import STEP_OBSERVERS
    import contextlib
    steps = []
    with STEP_OBSERVERS.observe(lambda: steps.append(1) or contextlib.nullcontext()):
        run_search(method, task, out=out, preset=preset, overrides=micro, progress=False)
    json.dump({"steps": len(steps)}, open(f"{out}/.steps.rank{dist.rank()}.json", "w"))
    dist.barrier()
    dist.cleanup()
''')
# failures of the launcher itself on a busy shared machine (ports, rendezvous), not of the code under test
_INFRA = ("Address already in use", "EADDRINUSE", "RendezvousError", "TCPStore", "Connection reset by peer")


def run_two_process_search(method: str, micro: dict[str, Any], out: Path, *, preset: str = "tiny",
                           n_train: int = 64, n_test: int = 32, timeout: int = 900) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node 2` of a micro search (gloo on the CPU, one thread per rank); each rank
    reads half of every global batch."""
    script = out.parent / f".{out.name}_ddp.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(_TORCHRUN_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           method, json.dumps(micro), str(out), preset, str(n_train), str(n_test)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("NAS_INTERRUPT_AFTER_EPOCH", None)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0 and any(s in p.stderr for s in _INFRA):  # one retry, only for launcher trouble
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return p


class SpaceTests:
    """The standard tests of a search space; parametrize `space` over the registered ones:

        @pytest.fixture(params=list_spaces())
        def space(request): return request.param
        class TestSpaces(SpaceTests): ...

    `net_overrides` maps a space to small net settings (the micro size the tests build at)."""

    net_overrides: ClassVar[dict[str, dict[str, Any]]] = {}

    def net(self, space: str) -> dict[str, Any]:
        sp = get_space(space)
        return sp.validate_net({**sp.default_net, "num_classes": 10, "input": [3, 32, 32],
                                **self.net_overrides.get(space, {})})

    def arch(self, space: str, seed: int = 0) -> Arch:
        sp = get_space(space)
        net = self.net(space)
        return Arch(space, sp.validate_spec(sp.random_spec(random.Random(seed), net)), net)

    def test_random_spec_is_valid_and_deterministic(self, space: str) -> None:
        sp = get_space(space)
        a, b = self.arch(space, 1), self.arch(space, 1)
        assert a == b
        assert sp.validate_spec(a.spec) == a.spec, "validate_spec is idempotent on its own output"

    def test_random_arch_builds_and_runs(self, space: str) -> None:
        arch = self.arch(space)
        model = arch.build().eval()
        with torch.no_grad():
            out = model(torch.randn(2, *arch.net["input"]))
        logits = out[0] if isinstance(out, tuple) else out
        assert logits.shape == (2, arch.net["num_classes"])

    def test_costs_equal_counted_costs(self, space: str) -> None:
        arch = self.arch(space, 2).with_costs()
        model = arch.build()
        assert arch.costs["macs"] == count_macs(model, tuple(arch.net["input"]))
        assert arch.costs["params"] == count_params(model)
        got = get_space(space).costs(arch.spec, arch.net)
        if got is not None:  # a closed-form count, where the space has one, must agree with tracing
            for k, v in got.items():
                assert v == pytest.approx(arch.costs[k], rel=1e-9), (k, v, arch.costs[k])

    def test_spec_round_trips_through_arch_json(self, space: str, tmp_path: Path) -> None:
        arch = self.arch(space, 3).with_costs()
        again = load_arch(save_arch(arch, tmp_path / "arch.json"))
        assert again == arch and again.costs == arch.costs
        m1, m2 = arch.build().eval(), again.build().eval()
        m2.load_state_dict(m1.state_dict())
        x = torch.randn(1, *arch.net["input"])
        with torch.no_grad():
            torch.testing.assert_close(m1(x), m2(x))


__all__ = ["HostSyncDetector", "SYNC_OPS", "SearchMethodTests", "SpaceTests", "detect_host_syncs",
           "run_two_process_search"]
