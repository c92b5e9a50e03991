"""BSN's distributed cost: the makespan of a greedy list schedule of a module DAG on k workers.

A node (module) is ready when all its predecessors are done. Whenever a worker is free, the ready
node that comes first in `dag_nodes` (give them in a topological order: the schedule is then BSN's
"scan the remaining nodes in order") starts on it and runs for `node_costs[node]` steps. Zero-cost
nodes (an identity skip, a gate that is off) finish the moment they are ready, without a worker, so
they take no step. The makespan is the time the last node finishes.

With unit costs this is BSN's `parallel_k` cost (the number of steps, each running up to k ready
modules); a chain costs the sum of its costs, parallel branches the max of theirs when k is at least
the number of branches, and any DAG at least sum(costs)/k.
"""
from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence

__all__ = ["makespan"]

Node = Hashable


def makespan(dag_nodes: Sequence[Node], edges: Iterable[tuple[Node, Node]],
             node_costs: Mapping[Node, float] | Callable[[Node], float] | None = None, k_workers: int = 1) -> float:
    """Steps to run every node of the DAG on `k_workers`, greedily (see the module docstring).

    `edges` are (predecessor, successor) pairs; `node_costs` maps a node to its duration (default 1
    per node; a callable works too). Returns an int when the costs are ints. Raises ValueError on an
    unknown node, a negative cost, k < 1 or a cycle.
    """
    if not isinstance(k_workers, int) or k_workers < 1:
        raise ValueError(f"k_workers must be a positive integer, got {k_workers!r}")
    order = {n: i for i, n in enumerate(dag_nodes)}
    if len(order) != len(dag_nodes):
        raise ValueError("dag_nodes has duplicate nodes")
    if node_costs is None:
        cost = {n: 1 for n in order}
    elif callable(node_costs):
        cost = {n: node_costs(n) for n in order}
    else:
        missing = [n for n in order if n not in node_costs]
        if missing:
            raise ValueError(f"node_costs has no cost for node(s) {missing[:5]}")
        cost = {n: node_costs[n] for n in order}
    for n, c in cost.items():
        if c < 0:
            raise ValueError(f"node {n!r} has a negative cost {c!r}")
    succ: dict[Node, list[Node]] = {n: [] for n in order}
    indeg = dict.fromkeys(order, 0)
    for u, v in edges:
        for n in (u, v):
            if n not in order:
                raise ValueError(f"edge ({u!r}, {v!r}) names node {n!r}, which is not in dag_nodes")
        succ[u].append(v)
        indeg[v] += 1

    t: float = 0
    ready = [order[n] for n in order if indeg[n] == 0]  # heap of positions in dag_nodes
    heapq.heapify(ready)
    running: list[tuple[float, int]] = []  # heap of (finish time, position)
    done = 0
    nodes = list(order)

    def finish(i: int) -> None:
        nonlocal done
        done += 1
        for v in succ[nodes[i]]:
            indeg[v] -= 1
            if indeg[v] == 0:
                heapq.heappush(ready, order[v])

    while True:
        # start what can start now: zero-cost nodes finish at once, others take a free worker
        waiting = []
        while ready:
            i = heapq.heappop(ready)
            c = cost[nodes[i]]
            if c == 0:
                finish(i)
            elif len(running) < k_workers:
                heapq.heappush(running, (t + c, i))
            else:
                waiting.append(i)
        for i in waiting:
            heapq.heappush(ready, i)
        if not running:
            break
        t = running[0][0]
        while running and running[0][0] == t:
            finish(heapq.heappop(running)[1])
    if done != len(nodes):
        raise ValueError("the graph has a cycle: makespan needs a DAG")
    return t
