"""Costs of sampled architectures: per-module tables, the budget penalty, the distributed makespan.

The cost of every module is counted once (nas_common's `count_macs` / `count_params` on the module
alone, at its input shape), so the cost of a batch of gate patterns is a masked sum:
``C(H_b) = fixed + active_b @ table`` where ``active`` comes from `SuperGraph.active` (on and
connected input->output). The fixed part is the ungated stem and head. By construction this equals
`count_macs`/`count_params` of the derived network built from the same pattern (a test checks it).

The distributed cost (BSN's third cost) is the number of steps of a greedy list schedule of the active
modules on k workers: each step, every worker that is free takes the first ready module (all its inputs
done) in topological order; a module runs `steps` time units (1 for a conv module, 0 for identities and
additions, which complete as soon as they are ready); a step counts when some module runs. A chain costs
the sum of its steps, parallel branches on enough workers the max. The schedule is simulated for the
whole batch at once (boolean masks over (B, N)), only for the distinct patterns of the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nas_common.costs import count_macs, count_params

from .graph import SuperGraph, make_op

COST_NAMES = ("macs", "params", "distributed")


@dataclass(frozen=True)
class CostTable:
    """Per-node costs of a super network (node order; zeros for inputs and additions)."""

    fixed: dict[str, float]            # stem + head, always paid
    per_node: dict[str, torch.Tensor]  # name -> (N,) float64
    steps: torch.Tensor                # (N,) int64 durations for the distributed cost

    def cost(self, name: str, active: torch.Tensor, k: int = 2) -> torch.Tensor:
        """(B,) float64 cost `name` of each example's active nodes (active: (B, N) bool)."""
        if name == "distributed":
            return distributed_cost(active, self.preds, self.steps, k)
        return self.fixed[name] + active.to(torch.float64) @ self.per_node[name]

    # the DAG, for the schedule
    preds: tuple[tuple[int, ...], ...] = ()


def cost_table(graph: SuperGraph) -> CostTable:
    """Count MACs and params of the stem, the head and every module once (cached on the graph)."""
    if "table" in graph._cache:
        return graph._cache["table"]
    n = len(graph.nodes)
    macs = torch.zeros(n, dtype=torch.float64)
    params = torch.zeros(n, dtype=torch.float64)
    # the modules built to be counted draw initial weights: keep the caller's RNG stream untouched, so a
    # search does not depend on whether this (cached) table was computed before in the process
    with torch.random.fork_rng(devices=[]):
        for i, node in enumerate(graph.nodes):
            if node.kind != "module":
                continue
            m = make_op(node.op)
            macs[i] = float(count_macs(m, graph.nodes[node.inputs[0]].shape))
            params[i] = float(count_params(m))
        stem, head = make_op(graph.stem), make_op(graph.head)
    fixed = {"macs": float(count_macs(stem, graph.input_shape) + count_macs(head, graph.nodes[-1].shape)),
             "params": float(count_params(stem) + count_params(head)), "distributed": 0.0}
    steps = torch.tensor([node.steps for node in graph.nodes], dtype=torch.int64)
    table = CostTable(fixed, {"macs": macs, "params": params}, steps,
                      preds=tuple(node.inputs for node in graph.nodes))
    graph._cache["table"] = table
    return table


def hinge_penalty(cost: torch.Tensor, budget: float, lam: float) -> torch.Tensor:
    """lambda * max(0, cost - budget): zero within the budget, linear above it (the paper's `max` mode)."""
    return lam * torch.clamp(cost - budget, min=0.0)


# ---- distributed cost -----------------------------------------------------------------------------

def makespan(active: torch.Tensor, preds: tuple[tuple[int, ...], ...] | list[list[int]], steps: torch.Tensor,
             k: int) -> torch.Tensor:
    """(B,) number of steps of a greedy list schedule of each row's active nodes on `k` workers.

    active: (B, N) bool (inactive nodes count as done from the start); preds: each node's inputs;
    steps: (N,) int durations (0 = completes as soon as ready, no worker needed). Nodes are taken in
    index order (a topological order) when several are ready.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1 worker, got {k}")
    active = active.bool().cpu()
    b, n = active.shape
    dep = torch.zeros(n, n)
    for i, ins in enumerate(preds):
        for j in ins:
            dep[j, i] = 1.0
    dur = steps.to(torch.int64).cpu().expand(b, n)
    remaining = torch.where(active, dur, torch.zeros_like(dur)).clone()
    done = ~active
    started = ~active
    instant = dur == 0
    t = torch.zeros(b, dtype=torch.float64)
    for _ in range(int(steps.sum()) + n + 2):
        while True:  # zero-duration nodes complete as soon as their inputs are done
            ready = ~started & ((~done).float() @ dep == 0)
            zero = ready & instant
            if not bool(zero.any()):
                break
            started |= zero
            done |= zero
        if bool(done.all()):
            break
        running = started & ~done
        free = k - running.sum(1, keepdim=True)
        ready_work = ready & ~instant
        start = ready_work & (ready_work.cumsum(1) <= free)
        started |= start
        running = started & ~done
        remaining = remaining - running.long()
        done |= running & (remaining <= 0)
        t += running.any(1).double()
    return t


def distributed_cost(active: torch.Tensor, preds: tuple[tuple[int, ...], ...], steps: torch.Tensor,
                     k: int) -> torch.Tensor:
    """`makespan` computed once per distinct pattern of the batch."""
    active = active.bool().cpu()
    uniq, inverse = torch.unique(active, dim=0, return_inverse=True)
    return makespan(uniq, preds, steps, k)[inverse]


# ---- the cheapest connected network ----------------------------------------------------------------

def min_connected_cost(graph: SuperGraph, name: str) -> float:
    """The lowest cost `name` of any gate pattern that connects input and output.

    Costs are non-negative, so a cheapest connected network is a single input->output path: a
    shortest-path recursion over the DAG (for the distributed cost, a path's makespan is its length).
    """
    table = cost_table(graph)
    w = table.steps.double() if name == "distributed" else table.per_node[name]
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
    """Costs (macs, params, distributed on k workers) of the network keeping the modules `keep`."""
    keep = set(keep)
    gates = torch.tensor([[nm in keep for nm in graph.gate_names]])
    active = graph.active(gates)
    table = cost_table(graph)
    return {name: float(table.cost(name, active, k)[0]) for name in COST_NAMES}
