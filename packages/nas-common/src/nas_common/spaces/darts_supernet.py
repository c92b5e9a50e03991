"""The weight-sharing supernet of the DARTS cell space, shared by NAT and ISTA-NAS.

Every candidate op sits on every edge of every cell (pooling followed by a BN without affine, as in
DARTS' MixedOp; `op_wrapper` may wrap each op, e.g. ISTA-NAS' one-stage affine BN). Node i (0-based,
`0..steps-1`) reads states j = 0..i+1 (0, 1 = the preprocessed cell inputs, 2.. = earlier nodes) over
edges numbered `edge_index(i, j) = sum_{k<i}(k+2) + j` (14 edges for 4 steps). The cell output is the
concat of the last `multiplier` nodes (all of them by default, as DARTS).

Two ways to run it:

- dense, `forward(x, weights_normal, weights_reduce)`: weights of shape (n_edges, n_ops); every op of
  every edge runs and the node is the weighted sum (DARTS' mixed op; the speed baseline). `none`/`null`
  ops contribute zero, so they are not computed.
- sparse, `forward_sparse(x, normal, reduce)`: a `CellChoice` per cell type lists, for each node,
  `(input_index, op_index, weight)` entries, weight a 0-d tensor (gradients flow into it) or None for
  1.0; the node is the sum of weight * op(state[input]) over its entries, and ONLY those ops run (two
  entries may share an edge). ISTA-NAS gives 2 (edge, op) pairs per node with its recovered weights; NAT
  gives one op per chosen input. `none`/`null` entries are skipped; as in the discrete network
  (`DartsNetwork`), a node left without live entries is zero and ops reading it are skipped too.
  Drop path (`drop_path_prob`, training only) applies to non-identity ops in this mode.

The dense and sparse modes agree whenever no node is dead (dense mode, like DARTS, still runs the ops
that read an all-zero node).
"""
from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from ..ops import PRIMITIVES, FactorizedReduce, ReLUConvBN, create_op, is_null_op
from .darts_blocks import AuxiliaryHead, drop_path, plan_cell, reduction_layers
from .darts_genotypes import Genotype, genotype_by_name

__all__ = ["CellChoice", "ChoiceEntry", "DartsSupernet", "SupernetCell", "cell_choice_from_genotype",
           "edge_index", "genotype_from_weights", "num_edges"]

#: One sparse-mode entry: (input_index, op_index, weight or None for 1.0).
ChoiceEntry = tuple[int, int, torch.Tensor | None]
#: Per intermediate node, its entries.
CellChoice = Sequence[Sequence[ChoiceEntry]]
#: op_wrapper(op, primitive_name, C) -> module that replaces op on an edge.
OpWrapper = Callable[[nn.Module, str, int], nn.Module]


def num_edges(steps: int = 4) -> int:
    """Edges of a cell with `steps` intermediate nodes: 2 + 3 + ... + (steps + 1) (14 for 4)."""
    return sum(i + 2 for i in range(steps))


def edge_index(node: int, input_index: int) -> int:
    """Index of the edge from state `input_index` into intermediate node `node` (both 0-based)."""
    if not 0 <= input_index < node + 2:
        raise ValueError(f"input {input_index} of node {node} must be in 0..{node + 1}")
    return node * (node + 3) // 2 + input_index


def cell_choice_from_genotype(genotype: Genotype, primitives: Sequence[str] = PRIMITIVES
                              ) -> tuple[list[list[ChoiceEntry]], list[list[ChoiceEntry]]]:
    """(normal, reduce) CellChoices that run exactly a genotype's ops, with weight None (1.0).

    `none`/`null` entries are dropped (they run nothing); any other op must be among `primitives`.
    """
    index = {p: k for k, p in enumerate(primitives)}

    def cell(ops: Sequence[tuple[str, int]], which: str) -> list[list[ChoiceEntry]]:
        if len(ops) % 2:
            raise ValueError(f"genotype.{which} needs 2 ops per node, got {len(ops)}")
        nodes: list[list[ChoiceEntry]] = []
        for i in range(len(ops) // 2):
            entries: list[ChoiceEntry] = []
            for op, j in ops[2 * i: 2 * i + 2]:
                if is_null_op(op):
                    continue
                if op not in index:
                    raise ValueError(f"genotype.{which}: op {op!r} of node {i} is not a candidate of this "
                                     f"supernet (primitives: {', '.join(primitives)})")
                entries.append((int(j), index[op], None))
            nodes.append(entries)
        return nodes

    return cell(genotype.normal, "normal"), cell(genotype.reduce, "reduce")


def genotype_from_weights(weights_normal: torch.Tensor, weights_reduce: torch.Tensor,
                          primitives: Sequence[str] = PRIMITIVES, steps: int = 4, multiplier: int | None = None,
                          inputs_per_node: int = 2) -> Genotype:
    """DARTS' derivation rule: per node, keep the `inputs_per_node` incoming edges whose strongest
    non-null op has the largest weight, each with that op (ties go to the lower index); the concat is the
    last `multiplier` nodes (all by default). `weights_*` are (n_edges, n_ops) (e.g. softmax(alpha))."""
    primitives = tuple(primitives)
    live = [k for k, p in enumerate(primitives) if not is_null_op(p)]
    if not live:
        raise ValueError("primitives has no op other than none/null: nothing to derive")
    multiplier = steps if multiplier is None else multiplier

    def cell(weights: torch.Tensor, which: str) -> list[tuple[str, int]]:
        if tuple(weights.shape) != (num_edges(steps), len(primitives)):
            raise ValueError(f"{which} weights must have shape ({num_edges(steps)}, {len(primitives)}), "
                             f"got {tuple(weights.shape)}")
        rows = weights.detach().float().cpu().tolist()  # one transfer; derivation is not a hot path
        gene: list[tuple[str, int]] = []
        for i in range(steps):
            start = i * (i + 3) // 2
            best = [max(live, key=lambda k, r=rows[start + j]: (r[k], -k)) for j in range(i + 2)]
            strength = [rows[start + j][best[j]] for j in range(i + 2)]
            edges = sorted(range(i + 2), key=lambda j: -strength[j])[:inputs_per_node]
            gene.extend((primitives[best[j]], j) for j in edges)
        return gene

    concat = list(range(2 + steps - multiplier, steps + 2))
    return Genotype(cell(weights_normal, "normal"), concat, cell(weights_reduce, "reduce"), list(concat))


class _SparsePlan:
    """A checked CellChoice with its liveness: per node the entries to run, and the inputs to preprocess."""

    __slots__ = ("concat", "needed_inputs", "run")

    def __init__(self, run: list[list[tuple[int, int, torch.Tensor | None]]], needed_inputs: set[int],
                 concat: list[int]) -> None:
        self.run, self.needed_inputs, self.concat = run, needed_inputs, concat


class SupernetCell(nn.Module):
    """A supernet cell: every primitive on every edge; dense or sparse forward."""

    def __init__(self, steps: int, multiplier: int, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool, primitives: Sequence[str], affine: bool = False,
                 op_wrapper: OpWrapper | None = None) -> None:
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.multiplier = multiplier
        self.C = C
        self.preprocess0 = (FactorizedReduce(C_prev_prev, C, affine=affine) if reduction_prev
                            else ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=affine))
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=affine)
        self.primitives = tuple(primitives)
        self._null = tuple(is_null_op(p) for p in self.primitives)
        self._live_ops = tuple(k for k, null in enumerate(self._null) if not null)
        self.edges = nn.ModuleList()
        self._identity: list[tuple[bool, ...]] = []  # per edge, per op: is it the identity (no drop path)
        for i in range(steps):
            for j in range(i + 2):
                stride = 2 if reduction and j < 2 else 1
                self.edges.append(nn.ModuleList(self._make_op(p, C, stride, affine, op_wrapper)
                                                for p in self.primitives))
                self._identity.append(tuple(p == "skip_connect" and stride == 1 for p in self.primitives))

    @staticmethod
    def _make_op(primitive: str, C: int, stride: int, affine: bool, op_wrapper: OpWrapper | None) -> nn.Module:
        op = create_op(primitive, C, stride, affine)
        if is_null_op(primitive):
            return op  # never run
        if "pool" in primitive:  # DARTS' MixedOp normalises pooling outputs
            op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
        if op_wrapper is not None:
            op = op_wrapper(op, primitive, C)
        return op

    def _zeros_like_node(self, s: torch.Tensor) -> torch.Tensor:
        n, _, h, w = s.shape
        if self.reduction:
            h, w = -(-h // 2), -(-w // 2)
        return s.new_zeros(n, self.C, h, w)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Dense (DARTS) mode: `weights` (n_edges, n_ops); node = sum over edges and ops of w * op(x)."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        rows = weights.unbind(0)
        e = 0
        for i in range(self.steps):
            h: torch.Tensor | None = None
            for j in range(i + 2):
                ws = rows[e].unbind(0)
                edge = self.edges[e]
                x = states[j]
                for k in self._live_ops:
                    t = ws[k] * edge[k](x)
                    h = t if h is None else h + t
                e += 1
            states.append(h if h is not None else self._zeros_like_node(states[1]))
        return torch.cat(states[-self.multiplier:], dim=1)

    def forward_sparse(self, s0: torch.Tensor, s1: torch.Tensor, plan: _SparsePlan,
                       drop_prob: float = 0.0) -> torch.Tensor:
        """Sparse mode: only the ops in `plan` run (see DartsSupernet.forward_sparse)."""
        states: list[torch.Tensor | None] = [
            self.preprocess0(s0) if 0 in plan.needed_inputs else None,
            self.preprocess1(s1) if 1 in plan.needed_inputs else None,
        ]
        drop = self.training and drop_prob > 0.0
        for i in range(self.steps):
            h: torch.Tensor | None = None
            for j, k, w in plan.run[i]:
                e = i * (i + 3) // 2 + j
                out = self.edges[e][k](states[j])
                if drop and not self._identity[e][k]:
                    out = drop_path(out, drop_prob)
                if w is not None:
                    out = w * out
                h = out if h is None else h + out
            states.append(h)
        outs = [states[c] for c in range(self.steps + 2 - self.multiplier, self.steps + 2)]
        zero = None
        for n, c in enumerate(range(self.steps + 2 - self.multiplier, self.steps + 2)):
            if outs[n] is None or c not in plan.concat:
                if zero is None:
                    zero = self._zeros_like_node(s1)
                outs[n] = zero
        return torch.cat(outs, dim=1)


class DartsSupernet(nn.Module):
    """The DARTS search network with every candidate op on every edge.

    Args:
        C: channels of the first cells (doubled at each reduction cell).
        num_classes: classifier outputs.
        layers: number of cells; reduction cells at layers//3 and 2*layers//3.
        primitives: candidate op names (any registered op; default the DARTS 8, `none` first).
        steps: intermediate nodes per cell (4); multiplier: how many of the last nodes form the output.
        stem_multiplier: stem channels = stem_multiplier * C.
        affine: affine BN in the ops and preprocessing (DARTS search: False).
        input_channels: channels of the input images.
        op_wrapper: `op_wrapper(op, primitive_name, C) -> nn.Module` replaces each (non-null) op.
        auxiliary: add DARTS' auxiliary head after cell 2*layers//3 (ISTA-NAS one-stage).

    Attributes: `n_edges`, `n_ops`, `primitives`, `drop_path_prob` (sparse mode, training only).
    In training with `auxiliary`, both forwards return (logits, aux_logits); otherwise logits.
    """

    def __init__(self, C: int, num_classes: int, layers: int, primitives: Sequence[str] = PRIMITIVES,
                 steps: int = 4, multiplier: int = 4, stem_multiplier: int = 3, affine: bool = False,
                 input_channels: int = 3, op_wrapper: OpWrapper | None = None, auxiliary: bool = False) -> None:
        super().__init__()
        primitives = tuple(primitives)
        if not primitives:
            raise ValueError("primitives must name at least one op")
        if len(set(primitives)) != len(primitives):
            raise ValueError(f"primitives has duplicates: {primitives}")
        if not 1 <= multiplier <= steps:
            raise ValueError(f"multiplier must be in 1..steps={steps}, got {multiplier}")
        self.primitives = primitives
        self.steps = steps
        self.multiplier = multiplier
        self.layers = layers
        self.n_ops = len(primitives)
        self.n_edges = num_edges(steps)
        self.drop_path_prob = 0.0
        self._aux_pos = 2 * layers // 3
        self._null = tuple(is_null_op(p) for p in primitives)

        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(input_channels, C_curr, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C_curr))
        C_pp, C_p, C_curr = C_curr, C_curr, C
        reductions = reduction_layers(layers)
        self.cells = nn.ModuleList()
        reduction_prev = False
        C_aux = C_p
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
            self.cells.append(SupernetCell(steps, multiplier, C_pp, C_p, C_curr, reduction, reduction_prev,
                                           primitives, affine, op_wrapper))
            reduction_prev = reduction
            C_pp, C_p = C_p, multiplier * C_curr
            if i == self._aux_pos:
                C_aux = C_p
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)

    # ---- forwards ------------------------------------------------------------------------------
    def _head(self, s1: torch.Tensor, aux: torch.Tensor | None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return (logits, aux) if aux is not None else logits

    def _check_weights(self, w: torch.Tensor, name: str) -> None:
        if not isinstance(w, torch.Tensor) or w.shape != (self.n_edges, self.n_ops):
            shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise ValueError(f"{name} must be a tensor of shape (n_edges, n_ops) = ({self.n_edges}, {self.n_ops}), "
                             f"got {shape}")

    def forward(self, x: torch.Tensor, weights_normal: torch.Tensor, weights_reduce: torch.Tensor
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Dense mode: every op runs, weighted by weights_* (n_edges, n_ops) (e.g. softmax(alpha, -1))."""
        self._check_weights(weights_normal, "weights_normal")
        self._check_weights(weights_reduce, "weights_reduce")
        s0 = s1 = self.stem(x)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, weights_reduce if cell.reduction else weights_normal)
            if i == self._aux_pos and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        return self._head(s1, aux)

    def forward_sparse(self, x: torch.Tensor, normal: CellChoice, reduce: CellChoice,
                       normal_concat: Iterable[int] | None = None, reduce_concat: Iterable[int] | None = None
                       ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Sparse mode: per node, only the listed (input_index, op_index, weight) entries run.

        Indices must be Python ints (or 0-d tensors, at the cost of a host sync each). `*_concat`
        optionally restricts which output nodes count: the others are zeros in the cell output (the
        channel count stays multiplier * C), and nodes that feed nothing are not computed.
        """
        plans = (self.plan_choice(normal, normal_concat, "normal"), self.plan_choice(reduce, reduce_concat, "reduce"))
        drop_prob = float(self.drop_path_prob)
        s0 = s1 = self.stem(x)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell.forward_sparse(s0, s1, plans[cell.reduction], drop_prob)
            if i == self._aux_pos and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        return self._head(s1, aux)

    # ---- choices ---------------------------------------------------------------------------------
    def plan_choice(self, choice: CellChoice, concat: Iterable[int] | None = None, name: str = "choice"
                    ) -> _SparsePlan:
        """Check a CellChoice and work out which entries run (null ops and dead nodes are dropped)."""
        if len(choice) != self.steps:
            raise ValueError(f"{name} must list entries for each of the {self.steps} nodes, got {len(choice)}")
        outputs = list(range(self.steps + 2 - self.multiplier, self.steps + 2))
        concat = outputs if concat is None else [int(c) for c in concat]
        for c in concat:
            if c not in outputs:
                raise ValueError(f"{name} concat: node {c} is not an output node of this supernet ({outputs})")
        entries: list[list[tuple[int, int, torch.Tensor | None]]] = []
        nodes = []
        for i, node in enumerate(choice):
            flat = []
            for n, entry in enumerate(node):
                if len(entry) != 3:
                    raise ValueError(f"{name}[{i}][{n}] must be (input_index, op_index, weight), got {entry!r}")
                j, k, w = operator.index(entry[0]), operator.index(entry[1]), entry[2]
                if not 0 <= j < i + 2:
                    raise ValueError(f"{name}[{i}][{n}]: input {j} of node {i} must be < {i + 2}")
                if not 0 <= k < self.n_ops:
                    raise ValueError(f"{name}[{i}][{n}]: op index {k} must be < n_ops={self.n_ops} "
                                     f"({', '.join(self.primitives)})")
                flat.append((j, k, w))
            entries.append(flat)
            nodes.append([(n, j, self._null[k]) for n, (j, k, _) in enumerate(flat)])
        plan = plan_cell(nodes, concat)
        run = [[entries[i][slot] for slot, _ in plan.entries[i]] for i in range(self.steps)]
        return _SparsePlan(run, plan.needed_inputs, concat)

    def genotype_choice(self, genotype: Genotype | str) -> tuple[list[list[ChoiceEntry]], list[list[ChoiceEntry]]]:
        """(normal, reduce) CellChoices running exactly a genotype's ops (a Genotype or a published name)."""
        if isinstance(genotype, str):
            genotype = genotype_by_name(genotype)
        for which, ops in (("normal", genotype.normal), ("reduce", genotype.reduce)):
            if len(ops) != 2 * self.steps:
                raise ValueError(f"genotype.{which} has {len(ops) // 2} nodes, this supernet {self.steps}")
        return cell_choice_from_genotype(genotype, self.primitives)

    def derive_genotype(self, weights_normal: torch.Tensor, weights_reduce: torch.Tensor,
                        inputs_per_node: int = 2) -> Genotype:
        """DARTS' rule on this supernet's primitives (see `genotype_from_weights`)."""
        return genotype_from_weights(weights_normal, weights_reduce, self.primitives, self.steps, self.multiplier,
                                     inputs_per_node)

    def choice_to_weights(self, choice: CellChoice) -> torch.Tensor:
        """The dense (n_edges, n_ops) weights equal to a CellChoice (entries on one (edge, op) add up)."""
        ref = next((w for node in choice for _, _, w in node if isinstance(w, torch.Tensor)), None)
        device = ref.device if ref is not None else self.classifier.weight.device
        dtype = ref.dtype if ref is not None else self.classifier.weight.dtype
        rows, vals = [], []
        for i, node in enumerate(choice):
            for j, k, w in node:
                rows.append(edge_index(i, int(j)) * self.n_ops + int(k))
                vals.append(w.reshape(()).to(device, dtype) if isinstance(w, torch.Tensor)
                            else torch.ones((), device=device, dtype=dtype))
        flat = torch.zeros(self.n_edges * self.n_ops, device=device, dtype=dtype)
        if rows:
            flat = flat.index_add(0, torch.tensor(rows, device=device), torch.stack(vals))
        return flat.view(self.n_edges, self.n_ops)
