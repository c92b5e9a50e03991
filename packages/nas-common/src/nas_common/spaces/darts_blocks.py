"""Pieces shared by the DARTS discrete network and the supernet: drop path, the auxiliary head, the
reduction-cell positions and the liveness analysis that lets a cell skip null edges and dead nodes."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AuxiliaryHead", "CellPlan", "drop_path", "plan_cell", "reduction_layers"]


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples of `x` with probability `drop_prob`, scaling the kept ones by 1/(1-p)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask.div_(keep)


class CellPlan:
    """Which parts of a cell DAG compute: the liveness analysis behind skipping null edges.

    `entries[i]` holds node i's live inputs as `(slot, input_index)` (slot = position in the genotype's
    op list); a node with no live entry is dead (zero). `needed_inputs` are the cell inputs (0, 1) read
    by a live entry; `computed` the intermediate nodes to compute (alive and in, or feeding, the concat).
    """

    __slots__ = ("computed", "concat", "entries", "needed_inputs", "steps")

    def __init__(self, steps: int, entries: list[list[tuple[int, int]]], concat: list[int],
                 computed: set[int], needed_inputs: set[int]) -> None:
        self.steps, self.entries, self.concat = steps, entries, concat
        self.computed, self.needed_inputs = computed, needed_inputs


def plan_cell(nodes: Sequence[Sequence[tuple[int, int, bool]]], concat: Iterable[int],
              prune_dead: bool = True) -> CellPlan:
    """Liveness of a cell: `nodes[i]` lists (slot, input_index, is_null) for intermediate node i.

    A state is alive if it is a cell input or has a non-null entry from an alive state; a state is
    needed if it is in `concat` or an alive entry of a needed node reads it. Only alive non-null entries
    of needed nodes run. With `prune_dead=False` (DARTS' own cell, which always preprocesses both inputs
    and runs every op of the genotype) both inputs and every alive node are needed.
    """
    steps = len(nodes)
    concat = list(concat)
    alive = [True, True] + [False] * steps
    for i, node in enumerate(nodes):
        alive[i + 2] = any(not null and alive[j] for _, j, null in node)
    needed = [False] * (steps + 2)
    for c in concat:
        needed[c] = alive[c]
    if not prune_dead:
        needed = [True, True] + alive[2:]
    for i in reversed(range(steps)):
        if needed[i + 2]:
            for _, j, null in nodes[i]:
                if not null and alive[j]:
                    needed[j] = True
    entries = [
        [(slot, j) for slot, j, null in node if not null and alive[j]] if needed[i + 2] else []
        for i, node in enumerate(nodes)
    ]
    computed = {i for i in range(steps) if needed[i + 2]}
    return CellPlan(steps, entries, concat, computed, {j for j in (0, 1) if needed[j]})


class AuxiliaryHead(nn.Module):
    """DARTS' auxiliary classifier.

    CIFAR (on the 8x8 maps of a 32x32 input): ReLU, 5x5 average pool with stride 3 (to 2x2), 1x1 conv
    to 128, BN, ReLU, 2x2 conv to 768, BN, ReLU, linear. ImageNet (`imagenet=True`, on 7x7 maps): the
    pool has stride 2 and there is no BN after the 768-channel conv (as in DARTS' ImageNet head).
    Maps smaller than the pool are average-pooled to 2x2 instead, and larger outputs are averaged, so
    it runs at any input size; at the papers' input sizes it is exactly DARTS' head. (Its first ReLU is
    not in place, unlike DARTS': the cells after it apply their own ReLU first, so the result is the
    same and autograd stays safe.)
    """

    def __init__(self, C: int, num_classes: int, imagenet: bool = False) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(5, stride=2 if imagenet else 3, padding=0, count_include_pad=False)
        self._min_size = 7 if imagenet else 8  # smallest map the 5x5 pool turns into >= 2x2
        layers: list[nn.Module] = [
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
        ]
        if not imagenet:
            layers.append(nn.BatchNorm2d(768))
        layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x)
        x = self.pool(x) if min(x.shape[-2:]) >= self._min_size else F.adaptive_avg_pool2d(x, 2)
        x = self.features(x)
        if x.shape[-1] != 1 or x.shape[-2] != 1:
            x = F.adaptive_avg_pool2d(x, 1)
        return self.classifier(x.flatten(1))


def reduction_layers(layers: int) -> tuple[int, ...]:
    """Indices of the reduction cells: layers//3 and 2*layers//3 (one index when they coincide)."""
    return tuple(sorted({layers // 3, 2 * layers // 3}))


