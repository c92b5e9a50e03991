"""The search step: no host sync, every cost (the distributed makespan included) computed on the device."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bsn_nas import BSNConfig, Schedule, SearchStep, cnf_graph, cost_table, rescnf_graph
from bsn_nas.costs import makespan
from nas_common import Budget, Task, get_dataset
from nas_common.oneshot import Accumulator
from nas_common.testing import SYNC_OPS as NAS_SYNC_OPS

# a MACs budget, the paper's FLOPs and the distributed makespan on 2 workers, all through nas_common's Budget
BUDGETS = Budget(limits={"macs": 1e9, "bsn-paper": 1.0e6, "distributed:2": 6.0})

# aten ops that make the host wait for the device (or need a data-dependent output size), or copy host
# data to it (lift_fresh: torch.tensor(...), or a Python scalar written into a slice); nas_common's list too
SYNC_OPS = {"_local_scalar_dense", "nonzero", "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive",
            "masked_select", "multinomial", "is_nonzero", "equal", "item", "lift_fresh"} | set(NAS_SYNC_OPS)
# Tensor methods that copy to the host
SYNC_METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


class _SyncOps(TorchDispatchMode):
    def __init__(self, hits: list[str]) -> None:
        super().__init__()
        self.hits = hits

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        name = func._overloadpacket.__name__
        if name in SYNC_OPS:
            self.hits.append(f"aten.{name}")
        elif name == "repeat_interleave" and kwargs.get("output_size") is None:
            self.hits.append("aten.repeat_interleave without output_size")
        elif name in ("index", "index_put", "index_put_"):
            idx = args[1] if len(args) > 1 else ()
            if any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in (idx or ())):
                self.hits.append(f"aten.{name} with a boolean mask")
        return func(*args, **kwargs)


@contextlib.contextmanager
def no_host_sync(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record every host-device sync a block of code would cause on an accelerator (it runs on the CPU)."""
    hits: list[str] = []
    for name in SYNC_METHODS:
        orig = getattr(torch.Tensor, name)

        def spy(self, *a, _orig=orig, _name=name, **k):  # noqa: ANN001, ANN202
            hits.append(f"Tensor.{_name}")
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    orig_to = torch.Tensor.to

    def to(self, *a, **k):  # noqa: ANN001, ANN202
        dev = k.get("device", a[0] if a and isinstance(a[0], (str, torch.device)) else None)
        if dev is not None and torch.device(dev).type == "cpu":
            hits.append("Tensor.to(cpu)")
        return orig_to(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "to", to)
    try:
        with _SyncOps(hits):
            yield hits
    finally:
        monkeypatch.undo()


def _step(budget: Budget, **cfg: object) -> tuple[SearchStep, torch.Tensor, torch.Tensor]:
    ds = get_dataset("cifar10-mini").subset(32, 8)
    task = Task(dataset=ds, budget=budget, device=torch.device("cpu"))
    config = BSNConfig(depth=8, widths=(4, 8, 8), batch_size=16, val_size=16, **cfg)
    step = SearchStep.build(task, config)
    x = ds.train.x[:16].float() / 255.0
    y = ds.train.y[:16]
    return step, x, y


@pytest.mark.parametrize("supernet", ["rescnf", "cnf"])
def test_search_step_has_no_host_sync(monkeypatch: pytest.MonkeyPatch, supernet: str) -> None:
    """The first step with a MACs budget, the paper's FLOPs and a distributed budget, executed as on an
    accelerator (dense: what `auto` runs off the CPU): nothing in it copies to the host or waits (the
    per-device matrices of the graph and the tables are made when the step is built)."""
    extra = {"cnf_layers": 2, "cnf_channels": 4} if supernet == "cnf" else {}
    step, x, y = _step(BUDGETS, supernet=supernet, execution="dense", **extra)
    assert set(step.budgets) == {"macs", "paper", "distributed"} and step.k == 2
    before = step.logits.detach().clone()
    acc = Accumulator(torch.device("cpu"))
    with no_host_sync(monkeypatch) as hits:
        step(x, y, acc)
    assert hits == [], sorted(set(hits))
    stats = acc.compute()
    assert stats["n"] == 16 and {"penalty", "sampled_macs", "sampled_paper", "sampled_distributed"} <= set(stats)
    assert not torch.equal(step.logits.detach(), before)  # the gates learned in the step


def test_the_guard_sees_the_syncs_of_host_driven_execution(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard is not blind: the host-driven modes read the sampled pattern on the host."""
    step, x, y = _step(Budget(macs=1e9), execution="gather")
    step(x, y)
    with no_host_sync(monkeypatch) as hits:
        step(x, y)
    assert "Tensor.tolist" in hits


def test_makespan_runs_a_fixed_number_of_steps_from_graham_bound() -> None:
    """The schedule never asks the device whether it is done: it runs ceil((W + (k-1) L) / k) rounds, which
    no pattern exceeds (checked against patterns whose schedule is longest: everything on, k = 1)."""
    for g in (cnf_graph({"layers": 3, "channels": 4, "num_classes": 10, "input": [3, 16, 16]}),
              rescnf_graph({"blocks": 2, "widths": [4, 8, 8], "shift": "slr", "num_classes": 10,
                            "input": [3, 16, 16]})):
        sched = cost_table(g).schedule
        work = int(sum(n.steps for n in g.nodes))
        assert sched.total == work
        full = g.active(torch.ones(1, g.num_gates, dtype=torch.bool))
        for k in (1, 2, 3):
            got = float(sched.makespan(full, k)[0])
            assert got <= sched.bound(k)
        assert float(sched.makespan(full, 1)[0]) == sched.bound(1) == work


def test_makespan_with_durations_and_dynamic_zero_nodes() -> None:
    """General durations, and zero-duration nodes that pass dependencies only where they are active."""
    # 0 -> 1 (work 2) -> 2 (zero, may be off) -> 4 (work 1); 0 -> 3 (work 3) -> 4; 2 -> 5 (work 3)
    ref = pytest.importorskip("nas_common.costs.distributed").makespan
    preds = ((), (0,), (1,), (0,), (2, 3), (2,))
    steps = [0, 2, 0, 3, 1, 3]
    on = torch.ones(1, 6, dtype=torch.bool)
    off = on.clone()
    off[0, 2] = False  # 4 and 5 no longer wait for node 1 through node 2
    assert float(makespan(on, preds, steps, 3)[0]) == 5   # 5 starts when 1 is done, at step 2
    assert float(makespan(off, preds, steps, 3)[0]) == 4  # 1, 3, 5 start at once
    assert float(makespan(on, preds, steps, 1)[0]) == 9
    for mask in (on, off):
        nodes = [i for i in range(6) if mask[0, i]]
        edges = [(j, i) for i in nodes for j in preds[i] if mask[0, j]]
        for k in (1, 2, 3):
            want = ref(nodes, edges, {i: steps[i] for i in nodes}, k)
            assert float(makespan(mask, preds, steps, k)[0]) == want
    sched = Schedule.build(preds, steps)
    assert sched.dyn.tolist() == [0, 2] and not sched.unit
    with pytest.raises(ValueError, match="topological"):
        Schedule.build(((1,), ()), [1, 1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_search_step_has_no_host_sync_on_cuda() -> None:
    """The default config on a GPU (`auto` runs dense there): CUDA reports no synchronising call in a step."""
    ds = get_dataset("cifar10-mini").subset(32, 8)
    task = Task(dataset=ds, budget=BUDGETS, device=torch.device("cuda"))
    step = SearchStep.build(task, BSNConfig(depth=8, widths=(4, 8, 8), batch_size=16, val_size=16))
    x = (ds.train.x[:16].float() / 255.0).cuda()
    y = ds.train.y[:16].cuda()
    acc = Accumulator(torch.device("cuda"))
    step(x, y, acc)  # warm-up: the per-device caches of the graph, the tables and the schedule
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(x, y, acc)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert acc.compute()["n"] == 32
