"""Costs of sampled architectures: per-module tables, the budget penalty, the distributed makespan.

Cost names (`COST_NAMES`):

* ``macs``  - multiply-accumulates of the convs and the classifier (nas_common's `count_macs`, what
  most papers call FLOPs);
* ``paper`` - the paper's FLOPs, as the official code counts them: ``macs`` plus one operation per
  element for each addition, i.e. an addition node that sums n active inputs of C x H x W elements
  costs C*H*W*(n-1) (BN, ReLU, pooling and biases are free). Full ResNet-20 is 40.90M by this count
  (the paper's 40.9M) against 40.81M MACs. The official code charges every addition node with the
  fan-in of the super network; we charge the additions the derived network performs (its active
  inputs), which is what `count_paper_flops` of the derived network counts;
* ``params`` - parameters (`count_params`);
* ``distributed`` - the number of steps of a greedy list schedule of the active modules on k workers.

The cost of every module is known in closed form (`graph.op_costs`, at its input shape), so the cost
of a batch of gate patterns is a masked sum, ``C(H_b) = fixed + active_b @ table`` (plus the additions for
``paper``), where ``active`` comes from `SuperGraph.active` (on and connected input->output). The fixed
part is the ungated stem and head. By construction this equals the count of the derived network built
from the same pattern (tests check it). Everything runs on the device of `active`, with no host sync.

The distributed cost: each step, every free worker takes the first ready module (all its inputs
done) in topological order; a module runs `steps` time units (1 for a conv module, 0 for identities
and additions, which complete as soon as they are ready); a step counts when some module runs. A chain
costs the sum of its steps, parallel branches on enough workers the max. `Schedule` simulates it for the
whole batch at once, on the device, for a fixed number of steps: Graham's bound on any greedy list
schedule of the full super network, ceil((total work + (k - 1) * longest path) / k), which no pattern
can exceed, so no step needs to ask the device whether the schedule is finished.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from nas_common.costs import CostInfo, count_macs, register_cost
from nas_common.registry import COSTS

from .graph import SuperGraph, op_costs

COST_NAMES = ("macs", "paper", "params", "distributed")
PAPER_COST = "bsn-paper"  # the name of the paper's FLOP count in nas_common's COSTS registry


# ---- the paper's FLOP count of any network ----------------------------------------------------------

class _AddCounter(TorchDispatchMode):
    """Counts the elements of every tensor + tensor addition of equal shapes (residual sums)."""

    _OPS = ("add", "add_")

    def __init__(self) -> None:
        super().__init__()
        self.adds = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if (func._overloadpacket.__name__ in self._OPS and len(args) >= 2 and isinstance(args[0], torch.Tensor)
                and isinstance(args[1], torch.Tensor) and args[0].shape == args[1].shape and args[0].numel() > 1):
            self.adds += args[0].numel()
        return out


# as nas_common's MAC counter: skip the dynamo wrapper of __torch_dispatch__ (counting is never traced)
_AddCounter.__torch_dispatch__ = getattr(_AddCounter.__torch_dispatch__, "__wrapped__",
                                         _AddCounter.__torch_dispatch__)


@torch.no_grad()
def count_additions(model: nn.Module, input_shape: Sequence[int], device: torch.device | str = "cpu") -> int:
    """Elements added by the tensor + tensor additions of one forward pass at batch 1 (eval mode)."""
    was = model.training
    model.eval()
    try:
        x = torch.zeros(1, *input_shape, device=device)
        with _AddCounter() as counter:
            model(x)
        return int(counter.adds)
    finally:
        model.train(was)


def count_paper_flops(model: nn.Module, input_shape: Sequence[int], device: torch.device | str = "cpu") -> float:
    """The BSN paper's FLOPs of `model` for one input: MACs of convs and linear layers plus additions.

    The official code counts a conv as Cin*Cout*Hout*Wout*k^2, a linear layer as in*out and an n-way
    addition of C*H*W tensors as C*H*W*(n-1); BN, ReLU, pooling and biases are free. By this count
    ResNet-20 is 40.90M (the paper's 40.9M), against 40.81M MACs.
    """
    shape = tuple(input_shape)
    return float(count_macs(model, shape, device=device) + count_additions(model, shape, device=device))


if not COSTS.registered(PAPER_COST):  # importing twice (reload) must not register twice
    register_cost(CostInfo(PAPER_COST, "FLOPs", "BSN's FLOPs: conv/linear MACs plus the additions (the paper's count)",
                           lambda model, shape, arg, device: count_paper_flops(model, shape, device)))


# ---- the distributed schedule -------------------------------------------------------------------

@dataclass(frozen=True)
class Schedule:
    """A DAG's greedy list schedule, precomputed for batched simulation.

    Work nodes (duration > 0) are scheduled; zero-duration nodes are contracted away. A zero-duration
    node is *static* when it is active whenever two active work nodes it connects are (the ungated
    additions and the input of a super network: an addition between active modules is reachable from
    the input and reaches the output), so the dependencies through it are fixed matrices; the others
    (gated identity skips, or every zero node when nothing is known about the masks) pass dependencies
    only where they are active, which is resolved per example.
    """

    n: int                    # nodes of the DAG
    work: torch.Tensor        # (W,) node index of each work node (topological order)
    dur: torch.Tensor         # (W,) its duration
    direct: torch.Tensor      # (W, W) float: [u, w] = w waits for u directly or through static zero nodes
    dyn: torch.Tensor         # (Z,) node index of each dynamic zero-duration node
    w_to_z: torch.Tensor      # (W, Z) float: work node u flows into dynamic node z through static nodes
    z_to_z: torch.Tensor      # (Z, Z) float
    z_to_w: torch.Tensor      # (Z, W) float
    z_depth: int              # longest chain of dynamic zero nodes
    total: int                # total work (sum of durations)
    longest: int              # longest path (sum of durations along it)
    unit: bool                # every work node lasts one step
    _dev: dict[str, Schedule] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, preds: Sequence[Sequence[int]], steps: Sequence[int] | torch.Tensor,
              static_zero: set[int] | frozenset[int] = frozenset()) -> Schedule:
        steps = [int(s) for s in (steps.tolist() if isinstance(steps, torch.Tensor) else steps)]
        n = len(preds)
        if any(s < 0 for s in steps):
            raise ValueError("durations must be >= 0")
        work = [i for i in range(n) if steps[i] > 0]
        dyn = [i for i in range(n) if steps[i] == 0 and i not in static_zero]
        wpos = {v: p for p, v in enumerate(work)}
        zpos = {v: p for p, v in enumerate(dyn)}
        # inflow[v]: the work and dynamic nodes that reach v through static zero nodes only
        inflow: list[set[int]] = [set() for _ in range(n)]
        for v in range(n):
            for p in preds[v]:
                if p >= v:
                    raise ValueError("nodes must be in topological order (every input before its consumer)")
                inflow[v] |= {p} if (p in wpos or p in zpos) else inflow[p]
        direct = torch.zeros(len(work), len(work))
        z_to_w = torch.zeros(len(dyn), len(work))
        w_to_z = torch.zeros(len(work), len(dyn))
        z_to_z = torch.zeros(len(dyn), len(dyn))
        for v in work:
            for u in inflow[v]:
                if u in wpos:
                    direct[wpos[u], wpos[v]] = 1.0
                else:
                    z_to_w[zpos[u], wpos[v]] = 1.0
        zchain = [0] * n
        for v in dyn:
            for u in inflow[v]:
                if u in wpos:
                    w_to_z[wpos[u], zpos[v]] = 1.0
                else:
                    z_to_z[zpos[u], zpos[v]] = 1.0
                    zchain[v] = max(zchain[v], zchain[u])
            zchain[v] += 1
        longest = [0] * n
        for v in range(n):
            longest[v] = steps[v] + max((longest[p] for p in preds[v]), default=0)
        return cls(n, torch.tensor(work, dtype=torch.long), torch.tensor([steps[v] for v in work], dtype=torch.long),
                   direct, torch.tensor(dyn, dtype=torch.long), w_to_z, z_to_z, z_to_w,
                   max(zchain, default=0), sum(steps), max(longest, default=0),
                   all(steps[v] == 1 for v in work))

    def bound(self, k: int) -> int:
        """Steps after which every greedy schedule on k workers of any subgraph has finished (Graham)."""
        return -(-(self.total + (k - 1) * self.longest) // k)

    def to(self, device: torch.device) -> Schedule:
        key = str(device)
        if key not in self._dev:
            self._dev[key] = Schedule(self.n, self.work.to(device), self.dur.to(device), self.direct.to(device),
                                      self.dyn.to(device), self.w_to_z.to(device), self.z_to_z.to(device),
                                      self.z_to_w.to(device), self.z_depth, self.total, self.longest, self.unit)
        return self._dev[key]

    def _waits(self, active: torch.Tensor) -> torch.Tensor:
        """(W, W) or, with dynamic zero nodes, (B, W, W): [.., u, w] = w waits for u."""
        if self.dyn.numel() == 0:
            return self.direct
        d = active.index_select(1, self.dyn).to(self.direct.dtype).unsqueeze(1)  # (B, 1, Z)
        flow = self.w_to_z.expand(active.shape[0], -1, -1)                      # (B, W, Z)
        for _ in range(self.z_depth - 1):  # flows through chains of active dynamic nodes
            flow = (self.w_to_z + (flow * d) @ self.z_to_z).clamp_(max=1.0)
        return (self.direct + (flow * d) @ self.z_to_w).clamp_(max=1.0)

    def makespan(self, active: torch.Tensor, k: int) -> torch.Tensor:
        """(B,) float64 steps of each row's schedule (active: (B, N) bool; inactive nodes are done)."""
        if k < 1:
            raise ValueError(f"k must be >= 1 worker, got {k}")
        sched = self.to(active.device)
        act = active.bool().index_select(1, sched.work)                          # (B, W)
        b = act.shape[0]
        t = torch.zeros(b, dtype=torch.float64, device=active.device)
        if sched.work.numel() == 0:
            return t
        waits = sched._waits(active)

        def blocked(notdone: torch.Tensor) -> torch.Tensor:
            f = notdone.to(waits.dtype)
            hit = f @ waits if waits.dim() == 2 else (f.unsqueeze(1) @ waits).squeeze(1)
            return hit > 0

        if sched.unit:  # every work node finishes in the step it starts: not done = not started
            pending = act
            for _ in range(sched.bound(k)):
                ready = pending & ~blocked(pending)
                start = ready & (ready.cumsum(1) <= k)
                pending = pending & ~start
                t = t + start.any(1)
            return t
        remaining = torch.where(act, sched.dur.expand(b, -1), torch.zeros_like(sched.dur).expand(b, -1))
        started, done = ~act, ~act
        for _ in range(sched.bound(k)):
            ready = ~started & ~blocked(~done)
            running = started & ~done
            free = k - running.sum(1, keepdim=True)
            start = ready & (ready.cumsum(1) <= free)
            started = started | start
            running = running | start
            remaining = remaining - running.long()
            done = done | (running & (remaining <= 0))
            t = t + running.any(1)
        return t


def makespan(active: torch.Tensor, preds: Sequence[Sequence[int]], steps: torch.Tensor | Sequence[int],
             k: int) -> torch.Tensor:
    """(B,) number of steps of a greedy list schedule of each row's active nodes on `k` workers.

    active: (B, N) bool (inactive nodes count as done from the start, any pattern); preds: each node's
    inputs; steps: (N,) int durations (0 = completes as soon as ready, no worker needed). Nodes are
    taken in index order (a topological order) when several are ready.
    """
    return Schedule.build(preds, steps).makespan(active, k)


# ---- per-module tables ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CostTable:
    """Per-node costs of a super network (node order; zeros for the input and additions)."""

    fixed: dict[str, float]            # stem + head, always paid
    per_node: dict[str, torch.Tensor]  # macs, params -> (N,) float64
    add_numel: torch.Tensor            # (N,) float64: elements of each addition node's output (0 elsewhere)
    add_inputs: torch.Tensor           # (N, N) float64: [i, a] = 1 when node i feeds addition node a
    steps: torch.Tensor                # (N,) int64 durations for the distributed cost
    schedule: Schedule
    preds: tuple[tuple[int, ...], ...] = ()
    _dev: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, compare=False, repr=False)

    def _on(self, device: torch.device) -> dict[str, torch.Tensor]:
        key = str(device)
        if key not in self._dev:
            self._dev[key] = {"macs": self.per_node["macs"].to(device), "params": self.per_node["params"].to(device),
                              "add_numel": self.add_numel.to(device), "add_inputs": self.add_inputs.to(device)}
        return self._dev[key]

    def cost(self, name: str, active: torch.Tensor, k: int = 2) -> torch.Tensor:
        """(B,) float64 cost `name` of each example's active nodes (active: (B, N) bool), on its device."""
        if name == "distributed":
            return self.schedule.makespan(active, k)
        t = self._on(active.device)
        a = active.to(torch.float64)
        if name == "macs" or name == "params":
            return self.fixed[name] + a @ t[name]
        if name == "paper":
            extra = ((a @ t["add_inputs"]) - 1.0).clamp_(min=0.0) * a  # additions each active sum performs
            return self.fixed["macs"] + a @ t["macs"] + extra @ t["add_numel"]
        raise KeyError(f"unknown cost {name!r}: choose one of {', '.join(COST_NAMES)}")


def cost_table(graph: SuperGraph) -> CostTable:
    """MACs and params of the stem, the head and every module, in closed form (`op_costs`; cached on the graph)."""
    if "table" in graph._cache:
        return graph._cache["table"]
    n = len(graph.nodes)
    macs = torch.zeros(n, dtype=torch.float64)
    params = torch.zeros(n, dtype=torch.float64)
    add_numel = torch.zeros(n, dtype=torch.float64)
    add_inputs = torch.zeros(n, n, dtype=torch.float64)
    for i, node in enumerate(graph.nodes):
        if node.kind == "add":
            add_numel[i] = float(node.shape[0] * node.shape[1] * node.shape[2])
            for j in node.inputs:
                add_inputs[j, i] = 1.0
        if node.kind != "module":
            continue
        m, p, out = op_costs(node.op, graph.nodes[node.inputs[0]].shape)
        if tuple(out) != tuple(node.shape):
            raise AssertionError(f"{node.name}: its op makes {out}, the graph says {node.shape}")  # a graph bug
        macs[i], params[i] = float(m), float(p)
    stem_macs, stem_params, _ = op_costs(graph.stem, graph.input_shape)
    head_macs, head_params, _ = op_costs(graph.head, graph.nodes[-1].shape)
    fixed_macs = float(stem_macs + head_macs)
    fixed = {"macs": fixed_macs, "paper": fixed_macs, "params": float(stem_params + head_params),
             "distributed": 0.0}
    steps = torch.tensor([node.steps for node in graph.nodes], dtype=torch.int64)
    preds = tuple(node.inputs for node in graph.nodes)
    static_zero = frozenset(i for i, node in enumerate(graph.nodes) if node.kind != "module")
    table = CostTable(fixed, {"macs": macs, "params": params}, add_numel, add_inputs, steps,
                      Schedule.build(preds, steps, static_zero), preds=preds)
    graph._cache["table"] = table
    return table


def hinge_penalty(cost: torch.Tensor, budget: float, lam: float) -> torch.Tensor:
    """lambda * max(0, cost - budget): zero within the budget, linear above it (the paper's `max` mode)."""
    return lam * torch.clamp(cost - budget, min=0.0)


def distributed_cost(active: torch.Tensor, preds: tuple[tuple[int, ...], ...], steps: torch.Tensor,
                     k: int) -> torch.Tensor:
    """The makespan of each row on k workers (kept for callers of the old name; see `Schedule`)."""
    return makespan(active, preds, steps, k)


# ---- the cheapest connected network ----------------------------------------------------------------

def min_connected_cost(graph: SuperGraph, name: str) -> float:
    """The lowest cost `name` of any gate pattern that connects input and output.

    Costs are non-negative and grow with the set of active modules, so a cheapest connected network is
    a single input->output path: a shortest-path recursion over the DAG (on a path every addition has
    one input, so ``paper`` equals ``macs`` there; for the distributed cost a path's makespan is its
    length).
    """
    table = cost_table(graph)
    key = "macs" if name == "paper" else name
    w = table.steps.double() if name == "distributed" else table.per_node[key]
    inf = float("inf")
    dist = [inf] * len(graph.nodes)
    for i, node in enumerate(graph.nodes):
        if node.kind == "input":
            dist[i] = 0.0
        elif node.kind == "module":
            dist[i] = dist[node.inputs[0]] + float(w[i])
        else:
            dist[i] = min(dist[j] for j in node.inputs)
    return table.fixed[name] + dist[-1]


def full_cost(graph: SuperGraph, name: str, k: int = 2) -> float:
    """The cost of the super network with every gate on."""
    active = graph.active(torch.ones(1, graph.num_gates, dtype=torch.bool))
    return float(cost_table(graph).cost(name, active, k)[0])


def pattern_costs(graph: SuperGraph, keep: Any, k: int = 2) -> dict[str, float]:
    """Costs (macs, paper, params, distributed on k workers) of the network keeping the modules `keep`."""
    keep = set(keep)
    gates = torch.tensor([[nm in keep for nm in graph.gate_names]])
    active = graph.active(gates)
    table = cost_table(graph)
    return {name: float(table.cost(name, active, k)[0]) for name in COST_NAMES}
