"""The DARTS cell space: genotypes, the discrete (evaluation) network, the `darts` Space and its
built-in architectures, and (re-exported) the weight-sharing supernet that NAT and ISTA-NAS share.

The discrete network is DARTS' CIFAR evaluation network (Liu et al., 2019): a 3x3 conv stem with
`stem_multiplier * C` channels, `layers` cells with reduction cells (channels doubled, resolution halved)
at `layers // 3` and `2 * layers // 3`, each cell preprocessing its two inputs to C channels
(ReLU-Conv1x1-BN, or FactorizedReduce after a reduction cell), an auxiliary head after cell
`2 * layers // 3` used only in training, global average pooling and a linear classifier. Drop path
zeroes whole samples of every non-identity op output, in training only, with probability
`model.drop_path_prob` (set by the trainer each epoch).

Departures needed by NAT's cells (none change a DARTS genotype's network): edges whose op is `none`/`null`
are not built; a node whose edges are all null (or whose inputs are all such dead nodes) is zero; a node
neither in the concat nor feeding one is not computed; an input (c_{k-2} or c_{k-1}) that no live edge
reads is not preprocessed.
"""
from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..arch import Arch, register_arch
from ..errors import ArchFileError
from ..ops import OPS, PRIMITIVES, FactorizedReduce, Identity, ReLUConvBN, create_op, is_null_op
from ..registry import ARCHS, SPACES
from .base import Space
from .darts_blocks import AuxiliaryHead, CellPlan, drop_path, plan_cell, reduction_layers
from .darts_genotypes import (
    AMOEBANET_A,
    DARTS_V1,
    DARTS_V2,
    ENAS,
    GENOTYPES,
    NASNET_A,
    PNAS,
    RESNET_BLOCK,
    VGG_BLOCK,
    Genotype,
    genotype_by_name,
)
from .darts_supernet import (
    CellChoice,
    ChoiceEntry,
    DartsSupernet,
    cell_choice_from_genotype,
    edge_index,
    genotype_from_weights,
    num_edges,
)

__all__ = [
    "AMOEBANET_A", "DARTS_V1", "DARTS_V2", "ENAS", "GENOTYPES", "NASNET_A", "PNAS", "RESNET_BLOCK",
    "VGG_BLOCK", "AuxiliaryHead", "CellPlan", "DartsCell", "DartsNetwork", "DartsSpace", "Genotype",
    "drop_path", "genotype_to_spec", "get_genotype", "plan_cell", "reduction_layers", "spec_to_genotype",
    # supernet (darts_supernet.py)
    "CellChoice", "ChoiceEntry", "DartsSupernet", "cell_choice_from_genotype", "edge_index", "genotype_from_weights",
    "num_edges",
]


# ---- the discrete network ----------------------------------------------------------------------------
class DartsCell(nn.Module):
    """One cell of a genotype: preprocess both inputs to C channels, then each node sums its two ops.

    Layout (stable: ISTA-NAS maps supernet weights onto it): `_ops` holds one module per live edge in
    genotype order, and `_run[i]` lists node i's `(input_index, position in _ops, drop-path-able)`;
    `preprocess0`/`preprocess1` are None for inputs no live edge reads; `C`, `reduction`, `multiplier`.
    """

    def __init__(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool, prune_dead: bool = True) -> None:
        super().__init__()
        ops = genotype.reduce if reduction else genotype.normal
        concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        if len(ops) % 2:
            raise ValueError(f"a genotype cell needs 2 ops per node, got {len(ops)} ops")
        self.reduction = reduction
        self.steps = len(ops) // 2
        self.multiplier = len(concat)
        self.C = C
        nodes = [[(2 * i + k, int(ops[2 * i + k][1]), is_null_op(ops[2 * i + k][0])) for k in (0, 1)]
                 for i in range(self.steps)]
        self.plan = plan_cell(nodes, concat, prune_dead)

        # preprocess only the inputs a live edge reads (NAT's cells may ignore c_{k-2}), unless the
        # network keeps DARTS' layout (prune_dead=False: both inputs, every op)
        self.preprocess0 = None
        if 0 in self.plan.needed_inputs:
            self.preprocess0 = (FactorizedReduce(C_prev_prev, C) if reduction_prev
                                else ReLUConvBN(C_prev_prev, C, 1, 1, 0))
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0) if 1 in self.plan.needed_inputs else None

        # one module per live edge; `_run[i]` = [(input_index, module position, apply drop path)]
        self._ops = nn.ModuleList()
        self._run: list[list[tuple[int, int, bool]]] = []
        for i in range(self.steps):
            node_run = []
            for slot, j in self.plan.entries[i]:
                stride = 2 if reduction and j < 2 else 1
                op = create_op(ops[slot][0], C, stride, affine=True)
                node_run.append((j, len(self._ops), not isinstance(op, Identity)))
                self._ops.append(op)
            self._run.append(node_run)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states: list[torch.Tensor | None] = [
            self.preprocess0(s0) if self.preprocess0 is not None else None,
            self.preprocess1(s1) if self.preprocess1 is not None else None,
        ]
        drop = self.training and drop_prob > 0.0
        for i in range(self.steps):
            if i not in self.plan.computed or not self._run[i]:
                states.append(None)
                continue
            h = None
            for j, pos, droppable in self._run[i]:
                out = self._ops[pos](states[j])
                if drop and droppable:
                    out = drop_path(out, drop_prob)
                h = out if h is None else h + out
            states.append(h)
        outs = [states[c] for c in self.plan.concat]
        if any(o is None for o in outs):  # dead nodes in the concat are zeros
            n, _, h, w = s1.shape
            if self.reduction:
                h, w = -(-h // 2), -(-w // 2)
            outs = [o if o is not None else s1.new_zeros(n, self.C, h, w) for o in outs]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


STEMS = ("cifar", "imagenet")


class DartsNetwork(nn.Module):
    """DARTS' evaluation network for a genotype.

    `stem="cifar"` (default): a stride-1 3x3 conv stem with stem_multiplier*C channels, as DARTS' CIFAR
    network. `stem="imagenet"`: DARTS' ImageNet network, two stems dividing the resolution by 8 (two
    stride-2 3x3 convs to C/2 then C, then a stride-2 3x3 conv), the first cell seeing a "reduced"
    previous input, and an ImageNet auxiliary head (DARTS: C 48, 14 cells, 224x224 inputs).
    Reduction cells sit at layers//3 and 2*layers//3; the auxiliary head after cell 2*layers//3.

    forward(x) returns `(logits, aux_logits)` in training mode when `auxiliary` is set, else `logits`.
    Set `drop_path_prob` (a float) before each training epoch; it is ignored in eval mode.
    """

    def __init__(self, C: int, num_classes: int, layers: int, genotype: Genotype, auxiliary: bool = False,
                 input_channels: int = 3, stem_multiplier: int = 3, stem: str = "cifar", prune_dead: bool = True
                 ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")
        self.genotype = genotype
        self.layers = layers
        self.drop_path_prob = 0.0
        self._aux_pos = 2 * layers // 3
        self.stem_kind = stem
        if stem == "cifar":
            C_curr = stem_multiplier * C
            self.stem = nn.Sequential(
                nn.Conv2d(input_channels, C_curr, 3, padding=1, bias=False),
                nn.BatchNorm2d(C_curr),
            )
            self.stem1 = None
            C_pp, C_p, reduction_prev = C_curr, C_curr, False
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(input_channels, C // 2, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(C // 2),
                nn.ReLU(inplace=True),
                nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(C),
            )
            self.stem1 = nn.Sequential(
                nn.ReLU(inplace=False),
                nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(C),
            )
            C_pp, C_p, reduction_prev = C, C, True
        C_curr = C
        reductions = reduction_layers(layers)
        self.cells = nn.ModuleList()
        C_aux = C_p
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
            cell = DartsCell(genotype, C_pp, C_p, C_curr, reduction, reduction_prev, prune_dead=prune_dead)
            self.cells.append(cell)
            reduction_prev = reduction
            C_pp, C_p = C_p, cell.multiplier * C_curr
            if i == self._aux_pos:
                C_aux = C_p
        self.auxiliary_head = (AuxiliaryHead(C_aux, num_classes, imagenet=stem == "imagenet") if auxiliary
                               else None)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem(x)
        s1 = self.stem1(s0) if self.stem1 is not None else s0
        aux = None
        drop_prob = float(self.drop_path_prob)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, drop_prob)
            if i == self._aux_pos and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return (logits, aux) if aux is not None else logits


# ---- spec <-> genotype -------------------------------------------------------------------------------
_SPEC_KEYS = ("normal", "normal_concat", "reduce", "reduce_concat")


def genotype_to_spec(genotype: Genotype) -> dict[str, Any]:
    """The JSON-able spec of a genotype: {"normal": [[op, input], ...], "normal_concat": [...], ...}."""
    return {
        "normal": [[str(op), int(j)] for op, j in genotype.normal],
        "normal_concat": [int(c) for c in genotype.normal_concat],
        "reduce": [[str(op), int(j)] for op, j in genotype.reduce],
        "reduce_concat": [int(c) for c in genotype.reduce_concat],
    }


def spec_to_genotype(spec: Mapping[str, Any]) -> Genotype:
    """The Genotype of a (validated) spec."""
    return Genotype(
        normal=[(str(op), int(j)) for op, j in spec["normal"]],
        normal_concat=[int(c) for c in spec["normal_concat"]],
        reduce=[(str(op), int(j)) for op, j in spec["reduce"]],
        reduce_concat=[int(c) for c in spec["reduce_concat"]],
    )


def get_genotype(name_or_spec: str | Genotype | Mapping[str, Any]) -> Genotype:
    """A Genotype from a published name (`darts-v2`, ...), a Genotype, or a spec dict (validated)."""
    if isinstance(name_or_spec, Genotype):
        return name_or_spec
    if isinstance(name_or_spec, str):
        return genotype_by_name(name_or_spec)
    return spec_to_genotype(DARTS_SPACE.validate_spec(name_or_spec))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ---- the space ---------------------------------------------------------------------------------------
class DartsSpace(Space):
    """The DARTS cell space: spec = a genotype; net = C, layers, auxiliary, num_classes, input, and
    optionally stem ("cifar" by default, "imagenet" for DARTS' ImageNet layout)."""

    name = "darts"
    default_net: dict[str, Any] = {"C": 36, "layers": 20, "auxiliary": True, "num_classes": 10,
                                   "input": [3, 32, 32]}
    #: keys `net` may hold besides the defaults: `stem` ("cifar", the default, or "imagenet").
    #: `prune_dead` (default true): build only what a live path reads; false keeps DARTS' layout (both
    #: inputs preprocessed, every non-null op run), the network NAT's published cells were counted on.
    optional_net: tuple[str, ...] = ("stem", "prune_dead")
    #: ops `random_spec` draws from: the DARTS candidates without `none`.
    random_ops: tuple[str, ...] = tuple(p for p in PRIMITIVES if p != "none")

    def validate_spec(self, spec: Any) -> dict[str, Any]:
        if not isinstance(spec, Mapping):
            raise ArchFileError(
                "spec must be an object with keys normal, normal_concat, reduce, reduce_concat "
                f"(a DARTS genotype), got {type(spec).__name__}")
        unknown = set(spec) - set(_SPEC_KEYS)
        if unknown:
            raise ArchFileError(f"spec: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                                f"valid: {', '.join(_SPEC_KEYS)}")
        out: dict[str, Any] = {}
        for cell in ("normal", "reduce"):
            for key in (cell, f"{cell}_concat"):
                if key not in spec:
                    raise ArchFileError(f"spec.{key} is missing (a DARTS genotype has {', '.join(_SPEC_KEYS)})")
            out[cell] = self._validate_ops(spec[cell], f"spec.{cell}")
            out[f"{cell}_concat"] = self._validate_concat(spec[f"{cell}_concat"], len(out[cell]) // 2,
                                                          f"spec.{cell}_concat")
        return {k: out[k] for k in _SPEC_KEYS}

    @staticmethod
    def _validate_ops(ops: Any, field: str) -> list[list[Any]]:
        if isinstance(ops, (str, bytes)) or not isinstance(ops, Sequence):
            raise ArchFileError(f"{field} must be a list of [op, input] pairs, got {ops!r}")
        if len(ops) < 2 or len(ops) % 2:
            raise ArchFileError(f"{field} must hold 2 [op, input] pairs per intermediate node (an even, "
                                f"non-zero number), got {len(ops)}")
        valid = OPS.names()
        out = []
        for k, entry in enumerate(ops):
            node = k // 2
            if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 2:
                raise ArchFileError(f"{field}[{k}] must be an [op, input] pair, got {entry!r}")
            op, j = entry
            if not isinstance(op, str) or op not in OPS:
                raise ArchFileError(f"{field}[{k}][0]: unknown op {op!r} (valid: {', '.join(valid)})")
            if not _is_int(j) or j < 0:
                raise ArchFileError(f"{field}[{k}][1]: input must be a non-negative integer, got {j!r}")
            if j >= node + 2:
                raise ArchFileError(f"{field}[{k}][1]: input {j} of node {node} must be < {node + 2} "
                                    f"(0, 1 = the cell inputs, 2.. = earlier nodes)")
            out.append([op, int(j)])
        return out

    @staticmethod
    def _validate_concat(concat: Any, steps: int, field: str) -> list[int]:
        if isinstance(concat, range):
            concat = list(concat)
        if isinstance(concat, (str, bytes)) or not isinstance(concat, Sequence) or not concat:
            raise ArchFileError(f"{field} must be a non-empty list of node indices, got {concat!r}")
        seen: set[int] = set()
        for k, c in enumerate(concat):
            if not _is_int(c) or not 2 <= c < steps + 2:
                raise ArchFileError(f"{field}[{k}]: {c!r} is not an intermediate node (valid: "
                                    f"2..{steps + 1} for {steps} nodes)")
            if c in seen:
                raise ArchFileError(f"{field}[{k}]: node {c} is listed twice")
            seen.add(c)
        return [int(c) for c in concat]

    def validate_net(self, net: Any) -> dict[str, Any]:
        out = super().validate_net(net)
        valid = [*self.default_net, *self.optional_net]
        unknown = set(out) - set(valid)
        if unknown:
            raise ArchFileError(f"net: unknown key(s) {', '.join(sorted(map(str, unknown)))} for the darts "
                                f"space; valid: {', '.join(valid)}")
        if "prune_dead" in out and not isinstance(out["prune_dead"], bool):
            raise ArchFileError(f"net.prune_dead must be true or false, got {out['prune_dead']!r}")
        if "stem" in out and out["stem"] not in STEMS:
            raise ArchFileError(f"net.stem must be one of {', '.join(map(repr, STEMS))} (the CIFAR or ImageNet "
                                f"layout of DARTS' network), got {out['stem']!r}")
        for key in ("C", "layers"):
            v = out[key]
            if not _is_int(v) or v < 1:
                raise ArchFileError(f"net.{key} must be a positive integer, got {v!r}")
        if not isinstance(out["auxiliary"], bool):
            raise ArchFileError(f"net.auxiliary must be true or false, got {out['auxiliary']!r}")
        return out

    def build(self, spec: dict[str, Any], net: dict[str, Any]) -> nn.Module:
        spec = self.validate_spec(spec)
        net = self.validate_net(net)
        c_in, h, w = net["input"]
        return DartsNetwork(net["C"], net["num_classes"], net["layers"], spec_to_genotype(spec),
                            auxiliary=net["auxiliary"], input_channels=c_in, stem=net.get("stem", "cifar"),
                            prune_dead=net.get("prune_dead", True))

    def random_spec(self, rng: random.Random, net: dict[str, Any] | None = None, steps: int = 4) -> dict[str, Any]:
        """Uniform: each node takes 2 distinct inputs among its predecessors, each with an op drawn
        uniformly from the 7 non-`none` DARTS ops; every intermediate node is concatenated."""
        def cell() -> list[list[Any]]:
            ops = []
            for i in range(steps):
                for j in sorted(rng.sample(range(i + 2), 2)):
                    ops.append([rng.choice(self.random_ops), j])
            return ops

        normal = cell()
        reduce = cell()
        concat = list(range(2, steps + 2))
        return {"normal": normal, "normal_concat": concat, "reduce": reduce, "reduce_concat": list(concat)}

    def scaled(self, spec: dict[str, Any], net: dict[str, Any], k: float) -> tuple[dict[str, Any], dict[str, Any]]:
        net = self.validate_net(net)
        return spec, {**net, "C": max(1, round(net["C"] * k))}

    def reference(self, net: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
        return "darts-v2", genotype_to_spec(DARTS_V2), self.validate_net(net)

    def size_variants(self, net: dict[str, Any]) -> list[dict[str, Any]]:
        layers = self.validate_net(net)["layers"]
        return [{"layers": layers + d} for d in (1, -1, 2, -2, 3, -3) if layers + d >= 3]

    def describe(self, spec: dict[str, Any]) -> str:
        def cell(ops: list, concat: list) -> str:
            nodes = [" + ".join(f"{op}({j})" for op, j in ops[2 * i: 2 * i + 2] if not is_null_op(op)) or "0"
                     for i in range(len(ops) // 2)]
            return "; ".join(f"n{i + 2}={n}" for i, n in enumerate(nodes)) + f"; out=cat{list(concat)}"

        return (f"normal: {cell(spec['normal'], spec['normal_concat'])} | "
                f"reduce: {cell(spec['reduce'], spec['reduce_concat'])}")

    @staticmethod
    def genotype(spec: Mapping[str, Any]) -> Genotype:
        return spec_to_genotype(spec)


DARTS_SPACE = DartsSpace()
if not SPACES.registered("darts"):  # re-importing the module (reload) must not register twice
    SPACES.register("darts", DARTS_SPACE)

#: `net` of the built-in architectures: DARTS' CIFAR-10 evaluation setting.
DARTS_CIFAR_NET: dict[str, Any] = {"C": 36, "layers": 20, "auxiliary": True, "num_classes": 10,
                                   "input": [3, 32, 32]}


def _arch_factory(name: str) -> Any:
    def factory() -> Arch:
        return Arch("darts", genotype_to_spec(GENOTYPES[name]), dict(DARTS_CIFAR_NET, input=[3, 32, 32]),
                    method=None, provenance={"source": f"published genotype {name!r}"})

    return factory


for _name in GENOTYPES:
    if not ARCHS.registered(_name):
        register_arch(_name, _arch_factory(_name))

