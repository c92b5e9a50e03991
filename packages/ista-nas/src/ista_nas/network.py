"""The networks of ISTA-NAS: the search supernets and the one-stage network with absorbed weights.

Two-stage search runs nas_common's shared DARTS supernet (`DartsSupernet`, BN without affine as in
DARTS' search) over the 7 ISTA-NAS ops, in its sparse mode: per node only the two selected ops run.

One-stage search trains the target network itself (20 cells, C 36, auxiliary head; or DARTS' ImageNet
network, `stem="imagenet"`). Every op ends with an affine BN (the parameter-free ops, pooling and the
identity skip, get one appended), and every BN inside an op (a separable conv's middle BN too) keeps
γ, β frozen at 1, 0 while its node is searched, as in the official code. When a node freezes, the BNs of
its ops become trainable; the op weights w stay fixed multipliers while the network trains on, and at
the end they are absorbed: w·(γ·x̂ + β) = (w·γ)·x̂ + w·β, so the network becomes the plain discrete
network of the genotype with γ' = w·γ, β' = w·β on each op's final BN, computing the same function.
That discrete network, "DARTS with a BN after each parameter-free op", is registered here as the space
`darts-bn` (same spec and net as `darts`), so `nas eval`/`nas train`/`load_model` work on a one-stage
run directory. In both, drop path applies to the skip+BN op too (it is no identity any more), as in the
official one-stage code.

`SparseForward` gives a supernet's sparse mode the `forward` that DistributedDataParallel hooks.

This module is the package's `nas_common.spaces` entry point: importing it registers the `darts-bn`
space, the `macs-ptflops` cost (`ista_nas.costs`), the published cells as built-in archs
(`ista_nas.archs`) and the `ista-imagenet` training recipe (`ista_nas.recipes`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from nas_common.registry import SPACES
from nas_common.spaces.darts import (
    DARTS_V2,
    AuxiliaryHead,
    CellChoice,
    DartsNetwork,
    DartsSpace,
    DartsSupernet,
    edge_index,
    genotype_to_spec,
    reduction_layers,
)
from nas_common.spaces.darts_supernet import SupernetCell

# registered on import, so that the entry point's module makes them known (see the module docstring)
from . import archs as _archs  # noqa: F401
from . import costs as _costs  # noqa: F401
from . import recipes as _recipes  # noqa: F401
from .closed_form import darts_costs
from .coding import ISTA_PRIMITIVES

__all__ = ["DartsBNSpace", "ImageNetStemSupernet", "SparseForward", "absorb", "bn_op_wrapper", "final_bn",
           "one_stage_supernet", "op_bns", "search_supernet", "set_op_bn_trainable"]

_PARAM_FREE = (nn.MaxPool2d, nn.AvgPool2d, nn.Identity)


def bn_op_wrapper(op: nn.Module, primitive: str, C: int) -> nn.Module:
    """The one-stage op: pooling and the identity skip get an affine BN appended (the supernet gives
    pooling a non-affine BN, replaced here); other ops already end with an affine BN."""
    if "pool" in primitive:
        pool = op[0] if isinstance(op, nn.Sequential) else op
        return nn.Sequential(pool, nn.BatchNorm2d(C, affine=True))
    if isinstance(op, nn.Identity):
        return nn.Sequential(op, nn.BatchNorm2d(C, affine=True))
    return op


def final_bn(op: nn.Module) -> nn.BatchNorm2d:
    """The last BatchNorm of an op: where its architecture weight is absorbed."""
    bns = [m for m in op.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        raise ValueError(f"op {type(op).__name__} has no BatchNorm to absorb a weight into")
    return bns[-1]


def op_bns(op: nn.Module) -> list[nn.BatchNorm2d]:
    """Every BatchNorm inside an op (a separable conv has two, a dilated conv one, skip+BN one)."""
    return [m for m in op.modules() if isinstance(m, nn.BatchNorm2d)]


class ImageNetStemSupernet(DartsSupernet):
    """The DARTS supernet with DARTS' ImageNet stem and head, for the one-stage ImageNet search.

    The stems and cells are those of `DartsNetwork(stem="imagenet")` (two stride-2 3x3 convs to C/2
    then C, a stride-2 3x3 conv, the first cell reading a "reduced" previous input; the ImageNet
    auxiliary head), with the same module names, so `absorb` maps its weights onto the discrete
    network. Only the sparse forward is provided (ISTA-NAS runs 2 ops per node).
    """

    def __init__(self, C: int, num_classes: int, layers: int, primitives: Sequence[str], steps: int,
                 multiplier: int, affine: bool, input_channels: int, op_wrapper: Any = None,
                 auxiliary: bool = False) -> None:
        super().__init__(C, num_classes, 0, primitives=primitives, steps=steps, multiplier=multiplier,
                         affine=affine, input_channels=input_channels, op_wrapper=op_wrapper)
        self.layers = layers
        self._aux_pos = 2 * layers // 3
        self.stem = nn.Sequential(
            nn.Conv2d(input_channels, C // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True), nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C))
        self.stem1 = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(C))
        C_pp, C_p, C_curr, reduction_prev = C, C, C, True
        reductions = reduction_layers(layers)
        self.cells = nn.ModuleList()
        C_aux = C_p
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
            self.cells.append(SupernetCell(steps, multiplier, C_pp, C_p, C_curr, reduction, reduction_prev,
                                           self.primitives, affine, op_wrapper))
            reduction_prev = reduction
            C_pp, C_p = C_p, multiplier * C_curr
            if i == self._aux_pos:
                C_aux = C_p
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes, imagenet=True) if auxiliary else None
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("ImageNetStemSupernet runs sparsely only: call forward_sparse")

    def forward_sparse(self, x: torch.Tensor, normal: CellChoice, reduce: CellChoice,
                       normal_concat: Any = None, reduce_concat: Any = None) -> Any:
        plans = (self.plan_choice(normal, normal_concat, "normal"), self.plan_choice(reduce, reduce_concat, "reduce"))
        drop_prob = float(self.drop_path_prob)
        s0 = self.stem(x)
        s1 = self.stem1(s0)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell.forward_sparse(s0, s1, plans[cell.reduction], drop_prob)
            if i == self._aux_pos and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        return self._head(s1, aux)


class SparseForward(nn.Module):
    """`forward(x, normal, reduce)` = `net.forward_sparse(x, normal, reduce)`: the module a search wraps in
    DistributedDataParallel, which only sees calls of `forward` (the supernets' own `forward` is the
    dense DARTS mode). State-dict keys gain the prefix `net.`: checkpoint `net` itself."""

    def __init__(self, net: DartsSupernet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, normal: CellChoice, reduce: CellChoice) -> Any:
        return self.net.forward_sparse(x, normal, reduce)


def search_supernet(C: int, num_classes: int, layers: int, steps: int, input_channels: int) -> DartsSupernet:
    """The two-stage search network: DARTS' supernet (non-affine BN) over the 7 ISTA-NAS ops."""
    return DartsSupernet(C, num_classes, layers, primitives=ISTA_PRIMITIVES, steps=steps, multiplier=steps,
                         affine=False, input_channels=input_channels)


def one_stage_supernet(C: int, num_classes: int, layers: int, steps: int, input_channels: int,
                       auxiliary: bool, stem: str = "cifar") -> DartsSupernet:
    """The one-stage network: affine BN everywhere, a BN after every parameter-free op, every BN inside
    every op frozen at γ=1, β=0 (unfreeze a node's with `set_op_bn_trainable`), drop path on every op
    (skip+BN included). `stem="imagenet"`: DARTS' ImageNet stem and head (`ImageNetStemSupernet`)."""
    kind = {"cifar": DartsSupernet, "imagenet": ImageNetStemSupernet}
    if stem not in kind:
        raise ValueError(f"stem must be one of {', '.join(kind)}, got {stem!r}")
    net = kind[stem](C, num_classes, layers, primitives=ISTA_PRIMITIVES, steps=steps, multiplier=steps,
                     affine=True, input_channels=input_channels, op_wrapper=bn_op_wrapper, auxiliary=auxiliary)
    for cell in net.cells:
        # the identity skip carries a BN here, so drop path applies to it as to every other op
        cell._identity = [tuple(False for _ in row) for row in cell._identity]
        for edge in cell.edges:
            for op in edge:
                for bn in op_bns(op):
                    bn.weight.requires_grad_(False)
                    bn.bias.requires_grad_(False)
    return net


def set_op_bn_trainable(net: DartsSupernet, cell_type: int, node: int, entries: Sequence[tuple[int, int]]) -> None:
    """Unfreeze every BN (γ, β) inside the ops `entries` = [(input_index, op_index)] of `node` in every
    cell of type `cell_type` (0 normal, 1 reduce)."""
    for cell in net.cells:
        if int(cell.reduction) != cell_type:
            continue
        for j, k in entries:
            for bn in op_bns(cell.edges[edge_index(node, j)][k]):
                bn.weight.requires_grad_(True)
                bn.bias.requires_grad_(True)


# ---- the discrete network with BN after parameter-free ops ---------------------------------------
class DartsBNSpace(DartsSpace):
    """DARTS' discrete network with an affine BN after each pooling and identity op (ISTA-NAS one-stage).

    Spec and net are those of `darts`. The harness's hooks: `scaled` multiplies C (as `darts`),
    `size_variants` tries other cell counts (as `darts`), `reference` is DARTS-V2's cell built in this
    space (the standard reference of the DARTS space, with the same BN-after-parameter-free-op layout
    as the networks it is compared with), `costs` the closed form of `ista_nas.closed_form`.
    """

    name = "darts-bn"

    def reference(self, net: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
        return "darts-v2", genotype_to_spec(DARTS_V2), self.validate_net(net)

    def costs(self, spec: dict[str, Any], net: dict[str, Any]) -> dict[str, float] | None:
        return darts_costs(self.validate_spec(spec), self.validate_net(net), bn_after_param_free=True)

    def build(self, spec: dict[str, Any], net: dict[str, Any]) -> nn.Module:
        model = super().build(spec, net)
        for cell in model.cells:
            for pos, op in enumerate(cell._ops):
                if isinstance(op, _PARAM_FREE):
                    cell._ops[pos] = nn.Sequential(op, nn.BatchNorm2d(cell.C, affine=True))
            # skip+BN is no identity: drop path applies to it (as in the official one-stage network)
            cell._run = [[(j, pos, True) for j, pos, _ in node] for node in cell._run]
        return model


DARTS_BN_SPACE = DartsBNSpace()
if not SPACES.registered("darts-bn"):
    SPACES.register("darts-bn", DARTS_BN_SPACE)


def absorb(supernet: DartsSupernet, weights: torch.Tensor, support: Sequence, spec: dict[str, Any],
           net: dict[str, Any]) -> DartsNetwork:
    """The discrete `darts-bn` network of `spec` carrying the supernet's trained weights, with each
    selected op's weight w absorbed into its final BN (γ ← w·γ, β ← w·β).

    `weights` (2, steps, 2) and `support` (nested list, candidate indices) are the one-stage code's;
    `spec` must be `genotype_from_support(support)` (same node and entry order).
    """
    model = DARTS_BN_SPACE.build(spec, net).to(next(supernet.parameters()).device)
    n_ops = len(ISTA_PRIMITIVES)
    src = supernet.state_dict()
    dst = model.state_dict()
    mapping: dict[str, str] = {}  # discrete op prefix -> supernet op prefix
    scale: dict[str, torch.Tensor] = {}  # discrete final-BN prefix -> w
    for c, (cell, scell) in enumerate(zip(model.cells, supernet.cells, strict=False)):
        t = int(scell.reduction)
        for i, node in enumerate(cell._run):
            for s, (j, pos, _) in enumerate(node):
                cand = int(support[t][i][s])
                if cand // n_ops != j:
                    raise ValueError("spec and support disagree: build spec with genotype_from_support(support)")
                e = edge_index(i, j)
                mapping[f"cells.{c}._ops.{pos}."] = f"cells.{c}.edges.{e}.{cand % n_ops}."
                bn = final_bn(cell._ops[pos])
                bn_name = next(n for n, m in cell._ops[pos].named_modules() if m is bn)
                scale[f"cells.{c}._ops.{pos}.{bn_name}."] = weights[t, i, s].detach()
    new = {}
    for key in dst:
        src_key = key
        for prefix, target in mapping.items():
            if key.startswith(prefix):
                src_key = target + key[len(prefix):]
                break
        if src_key not in src:
            raise KeyError(f"absorb: no supernet weight {src_key!r} for {key!r}")
        value = src[src_key].clone()
        for prefix, w in scale.items():
            if key.startswith(prefix) and key[len(prefix):] in ("weight", "bias"):
                value = value * w.to(value.dtype)
        new[key] = value
    model.load_state_dict(new)
    model.drop_path_prob = supernet.drop_path_prob
    return model
