"""Super networks as DAGs of modules with one Bernoulli gate per module (BSN's S-network).

A `SuperGraph` is a pure description (no weights): an ungated stem, nodes in topological order and an
ungated head. Node kinds:

* ``input``  - the stem's output (node 0);
* ``module`` - one transformation (a conv block, a skip, a 3x3 conv edge of a fabric) of one earlier
  node, switched on and off by its gate;
* ``add``    - ReLU(sum) of the modules that feed it (BSN's aggregation nodes, never gated).

The last node is the output, fed to the head. `BSNNetwork` builds the modules; with gates it runs the
sampled network per example, skipping modules that are off or not on an input->output path (the
"active" modules). The same class, built with `keep=...`, is the derived (pruned) network: its
parameter names match the super network's, so the jointly trained weights load into it unchanged.

Super networks: B-ResNet (`resnet_graph`), the residual fabric ResCNF with cross-stage shortcut blocks
(`rescnf_graph`) and the convolutional neural fabric B-CNF (`cnf_graph`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from nas_common.ops import PointwiseConv2d

NodeKind = Literal["input", "module", "add"]
ExecMode = Literal["auto", "dense", "skip", "gather"]
EXEC_MODES = ("auto", "dense", "skip", "gather")
BNStats = Literal["active", "batch"]


@dataclass(frozen=True)
class Node:
    """One node of a super network.

    `op` describes a module node's transformation (see `make_op`); `shape` is the node's output
    (C, H, W); `steps` is its duration in the distributed cost (0 for identities and additions).
    """

    name: str
    kind: NodeKind
    inputs: tuple[int, ...]
    shape: tuple[int, int, int]
    op: dict[str, Any] | None = None
    steps: int = 0


@dataclass(frozen=True)
class _ReachPlan:
    """Reachability as a few matrix products per topological level (built once per graph and device)."""

    is_module: torch.Tensor              # (N,) float: 1 for gated module nodes
    is_input: torch.Tensor               # (N,) float one-hot of node 0 (reachability's start)
    gate_to_node: torch.Tensor           # (G, N) float one-hot: gate g switches node modules[g]
    fwd_levels: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # (node idx, adjacency[:, idx]) per level
    bwd_levels: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # (node idx, adjacency[idx, :].T) per level


@dataclass(frozen=True)
class SuperGraph:
    """A super network's shape: stem, nodes (topological order, node 0 the input, last the output), head."""

    space: str
    net: dict[str, Any]
    stem: dict[str, Any]
    head: dict[str, Any]
    nodes: tuple[Node, ...]
    input_shape: tuple[int, int, int]
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # ---- structure ---------------------------------------------------------------------------
    @property
    def modules(self) -> list[int]:
        """Node indices of the gated modules, in gate order (gate g switches node modules[g])."""
        if "modules" not in self._cache:
            self._cache["modules"] = [i for i, n in enumerate(self.nodes) if n.kind == "module"]
        return self._cache["modules"]

    @property
    def gate_names(self) -> list[str]:
        return [self.nodes[i].name for i in self.modules]

    @property
    def num_gates(self) -> int:
        return len(self.modules)

    @property
    def consumers(self) -> list[list[int]]:
        if "consumers" not in self._cache:
            cons: list[list[int]] = [[] for _ in self.nodes]
            for i, n in enumerate(self.nodes):
                for j in n.inputs:
                    cons[j].append(i)
            self._cache["consumers"] = cons
        return self._cache["consumers"]

    def index(self, name: str) -> int:
        if "index" not in self._cache:
            self._cache["index"] = {n.name: i for i, n in enumerate(self.nodes)}
        return self._cache["index"][name]

    # ---- connectivity ------------------------------------------------------------------------
    def _plan(self, device: torch.device) -> _ReachPlan:
        key = f"reach:{device}"
        if key in self._cache:
            return self._cache[key]
        n = len(self.nodes)
        adj = torch.zeros(n, n)
        for i, node in enumerate(self.nodes):
            for j in node.inputs:
                adj[j, i] = 1.0
        depth = [0] * n
        for i, node in enumerate(self.nodes):
            depth[i] = 1 + max((depth[j] for j in node.inputs), default=-1)
        height: list[int | None] = [None] * n
        height[n - 1] = 0
        for i in range(n - 2, -1, -1):
            hs = [height[c] for c in self.consumers[i] if height[c] is not None]
            height[i] = 1 + max(hs) if hs else None  # None: reaches no output (never active)

        def levels(key_of: list[int | None], rows: bool) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
            groups: dict[int, list[int]] = {}
            for i, lv in enumerate(key_of):
                if lv is not None and lv > 0:
                    groups.setdefault(lv, []).append(i)
            out = []
            for lv in sorted(groups):
                idx = torch.tensor(groups[lv], dtype=torch.long)
                mat = adj[idx, :].t() if rows else adj[:, idx]
                out.append((idx.to(device), mat.contiguous().to(device)))
            return tuple(out)

        is_module = torch.tensor([float(nd.kind == "module") for nd in self.nodes])
        g2n = torch.zeros(self.num_gates, n)
        g2n[torch.arange(self.num_gates), torch.tensor(self.modules, dtype=torch.long)] = 1.0
        is_input = torch.zeros(n)
        is_input[0] = 1.0
        plan = _ReachPlan(is_module.to(device), is_input.to(device), g2n.to(device), levels(depth, rows=False),
                          levels(height, rows=True))
        self._cache[key] = plan
        return plan

    def active(self, gates: torch.Tensor) -> torch.Tensor:
        """(B, N) bool: node i is on an input->output path of example b's sampled network.

        `gates` is (B, G) bool (gate g of example b), on any device; so is the result. Reachability is
        propagated level by level through the DAG as 0/1 matrices (forward from the input, backward
        from the output), one small matrix product per topological level, vectorised over the batch
        and free of host syncs; a node counts only if both hold, so disconnected modules cost nothing
        (the official code charges them: a bug the paper's objective does not have).
        """
        plan = self._plan(gates.device)
        b, n = gates.shape[0], len(self.nodes)
        # per node: its gate for module nodes, 1 for the input and the (ungated) additions
        open_ = gates.to(plan.gate_to_node.dtype) @ plan.gate_to_node + (1.0 - plan.is_module)
        fwd = plan.is_input.expand(b, n).clone()  # (a scalar written into a slice would be a host-made tensor)
        for idx, cols in plan.fwd_levels:
            fwd.index_copy_(1, idx, (fwd @ cols).clamp_(max=1.0) * open_.index_select(1, idx))
        bwd = torch.zeros(b, n, device=gates.device)
        bwd[:, n - 1] = open_[:, n - 1]
        for idx, rows in plan.bwd_levels:
            bwd.index_copy_(1, idx, (bwd @ rows).clamp_(max=1.0) * open_.index_select(1, idx))
        return (fwd * bwd) > 0

    def prune(self, keep: set[str] | list[str]) -> list[str]:
        """The kept module names that lie on an input->output path, in topological order."""
        keep = set(keep)
        gates = torch.tensor([[name in keep for name in self.gate_names]])
        act = self.active(gates)[0].tolist()
        return [self.nodes[i].name for i in self.modules if act[i]]

    def connected(self, keep: set[str] | list[str]) -> bool:
        """Whether the kept modules connect the input to the output."""
        keep = set(keep)
        gates = torch.tensor([[name in keep for name in self.gate_names]])
        return bool(self.active(gates)[0, -1])


# ---- modules --------------------------------------------------------------------------------------

class MaskedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics can come from a subset of the batch.

    `forward(x, mask)` in training mode normalises with the mean and (biased) variance of the examples
    where `mask` (B,) is 1 and updates the running statistics with them (unbiased variance, as
    BatchNorm does; no update when the mask is empty). So a module computed on the whole batch with
    the mask of the examples that use it gives exactly what the module computed on those examples
    alone gives (the per-example sub-network semantics; see `BSNNetwork`), with no host sync. Without a
    mask, or in eval mode, it is a plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if mask is None or not self.training:
            return super().forward(x)
        b, c, h, w = x.shape
        m = mask.to(x.dtype).view(b, 1, 1, 1)
        n = m.sum() * (h * w)
        denom = n.clamp_min(1.0)
        xm = x * m
        mean = xm.sum((0, 2, 3)) / denom
        var = ((xm * x).sum((0, 2, 3)) / denom - mean.square()).clamp_min(0.0)  # biased, as BatchNorm's
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale = scale * self.weight
            shift = shift * self.weight + self.bias
        y = torch.addcmul(shift.view(1, c, 1, 1), x, scale.view(1, c, 1, 1))  # one pass over the activation
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                seen = n > 0
                dt = self.running_mean.dtype
                if self.momentum is None:  # cumulative average, as BatchNorm
                    mom = 1.0 / (self.num_batches_tracked + seen.long()).clamp_min(1).to(dt)
                else:
                    mom = torch.full((), self.momentum, dtype=dt, device=x.device)
                mom = torch.where(seen, mom, torch.zeros_like(mom))
                unbiased = var.detach() * (n / (n - 1.0).clamp_min(1.0))
                self.running_mean.lerp_(mean.detach().to(dt), mom)
                self.running_var.lerp_(unbiased.to(dt), mom)
                self.num_batches_tracked.add_(seen.long())
        return y


class GatedSequential(nn.Sequential):
    """nn.Sequential that hands a per-example mask to its BatchNorms (and nested GatedSequentials).

    Called as `op(x)` it is a plain Sequential. An empty one is the identity (the skip op).
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        for m in self:
            x = m(x, mask) if isinstance(m, (MaskedBatchNorm2d, GatedSequential)) else m(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour resize to a fixed size (a fabric's up edge; x2 for power-of-two inputs)."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=self.size, mode="nearest")


def basic_branch(cin: int, cout: int, stride: int) -> GatedSequential:
    """The residual branch of a CIFAR ResNet block: conv3x3(stride)-BN-ReLU-conv3x3-BN."""
    return GatedSequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), MaskedBatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False), MaskedBatchNorm2d(cout))


def conv_bn(cin: int, cout: int, k: int, stride: int, relu: bool = False) -> GatedSequential:
    conv = PointwiseConv2d(cin, cout, stride) if k == 1 else nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
    layers: list[nn.Module] = [conv, MaskedBatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return GatedSequential(*layers)


class Head(nn.Module):
    """Global average pooling and a linear classifier."""

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _conv_out(size: int, k: int, stride: int) -> int:
    """Output size of a k x k conv with padding k // 2 (how every conv here is padded)."""
    return (size + 2 * (k // 2) - k) // stride + 1


def op_costs(op: dict[str, Any], in_shape: tuple[int, ...]) -> tuple[int, int, tuple[int, ...]]:
    """(MACs, params, output shape) of the module `make_op(op)` on one input of shape `in_shape`, in
    closed form: a k x k conv is Cin*Cout*k^2*Hout*Wout MACs and Cin*Cout*k^2 weights (no bias), each
    BatchNorm 2*C params, the classifier in*out MACs and in*out + out params; identities, ReLU,
    upsampling and pooling are free. These are the numbers nas_common's `count_macs` / `count_params`
    report for the built module (tests check it), without building or tracing anything."""
    t = op["type"]
    if t == "identity":
        return 0, 0, tuple(in_shape)
    if t == "head":
        cin, n = int(op["cin"]), int(op["num_classes"])
        return cin * n, cin * n + n, (n,)
    cin, cout = int(op["cin"]), int(op["cout"])
    _, h, w = (int(v) for v in in_shape)
    if t == "basic":
        s = int(op["stride"])
        ho, wo = _conv_out(h, 3, s), _conv_out(w, 3, s)
        return 9 * (cin + cout) * cout * ho * wo, 9 * (cin + cout) * cout + 4 * cout, (cout, ho, wo)
    if t == "conv_bn":
        k, s = int(op.get("k", 3)), int(op.get("stride", 1))
        ho, wo = _conv_out(h, k, s), _conv_out(w, k, s)
        return cin * cout * k * k * ho * wo, cin * cout * k * k + 2 * cout, (cout, ho, wo)
    if t == "up_conv_bn":
        ho, wo = (int(v) for v in op["size"])
        return 9 * cin * cout * ho * wo, 9 * cin * cout + 2 * cout, (cout, ho, wo)
    raise ValueError(f"unknown op type {t!r}")


def make_op(op: dict[str, Any]) -> nn.Module:
    """The nn.Module an op description stands for."""
    t = op["type"]
    if t == "basic":
        return basic_branch(op["cin"], op["cout"], op["stride"])
    if t == "identity":
        return GatedSequential()
    if t == "conv_bn":  # k x k conv (stride) + BN; relu optional (stems)
        return conv_bn(op["cin"], op["cout"], op.get("k", 3), op.get("stride", 1), op.get("relu", False))
    if t == "up_conv_bn":  # nearest upsampling to `size`, then 3x3 conv + BN
        return GatedSequential(Upsample(op["size"]), conv_bn(op["cin"], op["cout"], 3, 1))
    if t == "head":
        return Head(op["cin"], op["num_classes"])
    raise ValueError(f"unknown op type {t!r}")


# ---- the network --------------------------------------------------------------------------------

class BSNNetwork(nn.Module):
    """A super network (all modules) or, with `keep`, a derived network (only the kept modules).

    `forward(x)` runs every built module (for a derived network: exactly the pruned architecture).
    `forward(x, active=A)` runs the sampled network of each example: A is the (B, N) bool matrix of
    `SuperGraph.active`; a module is computed only for the examples where it is active. `mode` picks
    how: ``dense`` computes every module on the whole batch and multiplies by the mask (the official
    code; no savings, but no host sync: A may stay on the device); ``skip`` skips a module that is
    inactive for the whole batch, else is dense; ``gather`` runs a module only on the examples where it
    is active (index_select / index_copy); ``auto`` skips, runs whole-batch modules directly and gathers
    when at most `gather_below` of the batch needs the module. skip, gather and auto read A on the host
    (free on the CPU, one device->host copy per forward elsewhere). packages/bsn/benchmarks/bench_bsn.py
    measures the modes.

    Training numerics. With `bn_stats="active"` (the default) every mode computes the same function:
    a module's BatchNorm uses the statistics of the examples that run it, which is what running each
    example's own sub-network means; dense mode gets there with `MaskedBatchNorm2d`. With
    `bn_stats="batch"` (the official code's numerics, dense mode only) the statistics of a module come
    from the whole batch, including the examples that do not use it (their input to it zeroed or partial).
    """

    def __init__(self, graph: SuperGraph, keep: set[str] | list[str] | None = None, mode: ExecMode = "auto",
                 gather_below: float = 0.9, bn_stats: BNStats = "active") -> None:
        super().__init__()
        if mode not in EXEC_MODES:
            raise ValueError(f"mode must be one of {EXEC_MODES}, got {mode!r}")
        if bn_stats not in ("active", "batch"):
            raise ValueError(f"bn_stats must be 'active' or 'batch', got {bn_stats!r}")
        if bn_stats == "batch" and mode != "dense":
            raise ValueError("bn_stats='batch' (whole-batch BatchNorm statistics) exists only in dense mode")
        self.graph = graph
        self.mode = mode
        self.gather_below = gather_below
        self.bn_stats = bn_stats
        self.stem = make_op(graph.stem)
        keep_set = None if keep is None else set(keep)
        self.ops = nn.ModuleDict({
            n.name: make_op(n.op) for n in graph.nodes
            if n.kind == "module" and (keep_set is None or n.name in keep_set)})
        self.head = make_op(graph.head)

    def module_dag(self) -> tuple[list[str], list[tuple[str, str]], dict[str, int]]:
        """(nodes, edges, node_costs) of this network's module DAG: the nodes on an input->output path
        of the modules it has, in topological order, the (predecessor, successor) edges between them,
        and each node's steps in the distributed cost (1 per conv module, 0 for identities, additions
        and the input). nas_common's `distributed:K` cost is the makespan of this DAG on K workers."""
        g = self.graph
        pattern = torch.tensor([[name in self.ops for name in g.gate_names]])
        on = g.active(pattern)[0].tolist()
        nodes = [n.name for i, n in enumerate(g.nodes) if on[i]]
        edges = [(g.nodes[j].name, n.name) for i, n in enumerate(g.nodes) if on[i] for j in n.inputs if on[j]]
        return nodes, edges, {n.name: n.steps for i, n in enumerate(g.nodes) if on[i]}

    def forward(self, x: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        if active is None:
            return self._forward_static(x)
        if self.mode == "dense":
            return self._forward_dense(x, active)
        return self._forward_sampled(x, active)

    def _forward_static(self, x: torch.Tensor) -> torch.Tensor:
        nodes = self.graph.nodes
        outs: list[torch.Tensor | None] = [None] * len(nodes)
        outs[0] = self.stem(x)
        for i, node in enumerate(nodes):
            if node.kind == "module":
                inp = outs[node.inputs[0]]
                if inp is not None and node.name in self.ops:
                    outs[i] = self.ops[node.name](inp)
            elif node.kind == "add":
                outs[i] = _relu_sum([outs[j] for j in node.inputs])
        return self.head(self._final(outs[-1], x))

    def _final(self, out: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        if out is not None:
            return out
        shape = self.graph.nodes[-1].shape  # no path at all: the head sees zeros
        return x.new_zeros(x.shape[0], *shape)

    def _forward_dense(self, x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Every module on the whole batch, outputs multiplied by the mask: no host sync."""
        nodes = self.graph.nodes
        b = x.shape[0]
        if active.device != x.device:  # a host-made pattern (evaluation); in a search it is made on the device
            active = active.to(x.device)
        mask = active.to(x.dtype)
        per_example = self.bn_stats == "active"
        outs: list[torch.Tensor | None] = [None] * len(nodes)
        outs[0] = self.stem(x)
        for i, node in enumerate(nodes):
            if node.kind == "add":
                outs[i] = _relu_sum([outs[j] for j in node.inputs])
            elif node.kind == "module":
                m = mask[:, i]
                op = self.ops[node.name]
                y = op(outs[node.inputs[0]], m) if per_example else op(outs[node.inputs[0]])
                outs[i] = y * m.view(b, 1, 1, 1)
        return self.head(self._final(outs[-1], x))

    def _forward_sampled(self, x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        nodes = self.graph.nodes
        b = x.shape[0]
        act_cpu = active.detach().to("cpu")
        counts = act_cpu.sum(0).tolist()  # host-side decisions: a device->host copy off the CPU
        mask = active.to(device=x.device, dtype=x.dtype)
        outs: list[torch.Tensor | None] = [None] * len(nodes)
        outs[0] = self.stem(x)
        for i, node in enumerate(nodes):
            if node.kind == "add":
                outs[i] = _relu_sum([outs[j] for j in node.inputs])
                continue
            if node.kind != "module":
                continue
            inp = outs[node.inputs[0]]
            op = self.ops[node.name]
            c = counts[i]
            if c == 0 or inp is None:
                continue
            if c == b:
                outs[i] = op(inp)
            elif (self.mode == "gather" or (self.mode == "auto" and c <= self.gather_below * b)) and (
                    c * node.shape[1] * node.shape[2] > 1 or not self.training):  # BN needs >1 value
                idx = torch.nonzero(act_cpu[:, i]).flatten().to(x.device, non_blocking=True)
                sub = op(inp.index_select(0, idx))
                outs[i] = sub.new_zeros(b, *sub.shape[1:]).index_copy(0, idx, sub)
            else:
                m = mask[:, i]
                outs[i] = op(inp, m) * m.view(b, 1, 1, 1)
        return self.head(self._final(outs[-1], x))


def _relu_sum(xs: list[torch.Tensor | None]) -> torch.Tensor | None:
    xs = [t for t in xs if t is not None]
    if not xs:
        return None
    s = xs[0]
    for t in xs[1:]:
        s = s + t
    return F.relu(s)


# ---- the super networks ---------------------------------------------------------------------------

def _half(hw: tuple[int, int]) -> tuple[int, int]:
    return (hw[0] + 1) // 2, (hw[1] + 1) // 2


SHIFT_LETTERS = "slr"


def shortcut_sources(n: int, blocks: int, shift: str) -> list[int]:
    """Which nodes of stage b-1 feed the shortcuts of block n of stage b > 0 (the official ResCNF rule).

    Returns positions in stage b-1: j >= 0 is the output (addition) of its block j, -1 its input.
    's': block blocks-n-2; 'l' (not for block 0): block blocks-1-n; 'r' (not for the last block):
    block blocks-n-3. In the official code the input of stage b-1 is the stem for b = 1 and the
    stage's IDENT node (its input) otherwise.
    """
    out = []
    if "s" in shift:
        out.append(max(-1, blocks - n - 2))
    if "l" in shift and n != 0:
        out.append(blocks - 1 - n)
    if "r" in shift and n != blocks - 1:
        out.append(max(-1, blocks - n - 3))
    return out


def _residual_graph(space: str, net: dict[str, Any], blocks: int, widths: list[int], shift: str) -> SuperGraph:
    """Stages of `blocks` residual blocks; with `shift`, ResCNF's cross-stage shortcut blocks and skips.

    Block n of stage s: a branch `s{s}b{n}_block` (conv3x3-BN-ReLU-conv3x3-BN, stride 2 at the start of
    stages > 0), a skip `s{s}b{n}_skip` (identity, or 1x1 conv + BN where the shape changes) and, for
    s > 0, one shortcut block `s{s}b{n}_sc{i}_block` and one shortcut skip `s{s}b{n}_sc{i}_skip` (1x1
    conv + BN) from each source node of stage s-1 (`shortcut_sources`; stride = the resolution ratio,
    2 or 4); the block's output is ReLU of the sum of all of them.
    """
    cin_img, h, w = (int(v) for v in net["input"])
    stem_w = widths[0]
    nodes: list[Node] = [Node("input", "input", (), (stem_w, h, w))]
    stage_in: list[int] = []                        # node feeding stage s
    stage_adds: list[list[int]] = []                # output node of block n of stage s
    prev, cin, hw = 0, stem_w, (h, w)

    def skip_or_proj(name: str, src: int, c_src: int, width: int, stride: int, shape: tuple[int, int, int]) -> None:
        if stride == 1 and c_src == width:
            nodes.append(Node(name, "module", (src,), shape, {"type": "identity"}, steps=0))
        else:
            nodes.append(Node(name, "module", (src,), shape,
                              {"type": "conv_bn", "cin": c_src, "cout": width, "k": 1, "stride": stride}, steps=1))

    for s, width in enumerate(widths):
        stage_in.append(prev)
        stage_adds.append([])
        for j in range(blocks):
            stride = 2 if (s > 0 and j == 0) else 1
            out_hw = _half(hw) if stride == 2 else hw
            shape = (width, *out_hw)
            ins = []
            nodes.append(Node(f"s{s}b{j}_block", "module", (prev,), shape,
                              {"type": "basic", "cin": cin, "cout": width, "stride": stride}, steps=1))
            ins.append(len(nodes) - 1)
            skip_or_proj(f"s{s}b{j}_skip", prev, cin, width, stride, shape)
            ins.append(len(nodes) - 1)
            if s > 0 and shift:
                for i, pos in enumerate(shortcut_sources(j, blocks, shift)):
                    src = stage_adds[s - 1][pos] if pos >= 0 else stage_in[s - 1]
                    src_stage = s - 1 if pos >= 0 else max(0, s - 2)
                    sc_stride = 2 ** (s - src_stage)
                    c_src = nodes[src].shape[0]
                    nodes.append(Node(f"s{s}b{j}_sc{i}_block", "module", (src,), shape,
                                      {"type": "basic", "cin": c_src, "cout": width, "stride": sc_stride}, steps=1))
                    ins.append(len(nodes) - 1)
                    skip_or_proj(f"s{s}b{j}_sc{i}_skip", src, c_src, width, sc_stride, shape)
                    ins.append(len(nodes) - 1)
            nodes.append(Node(f"s{s}b{j}_add", "add", tuple(ins), shape))
            prev, cin, hw = len(nodes) - 1, width, out_hw
            stage_adds[s].append(prev)
    return SuperGraph(
        space=space, net=dict(net),
        stem={"type": "conv_bn", "cin": cin_img, "cout": stem_w, "k": 3, "stride": 1, "relu": True},
        head={"type": "head", "cin": cin, "num_classes": int(net["num_classes"])},
        nodes=tuple(nodes), input_shape=(cin_img, h, w))


def resnet_graph(net: dict[str, Any]) -> SuperGraph:
    """B-ResNet: a CIFAR ResNet (depth 6n+2) whose every block branch and every skip has a gate.

    Block j of stage s: a branch (conv3x3-BN-ReLU-conv3x3-BN, stride 2 at the start of stages > 0),
    a skip (identity, or 1x1 conv + BN where the shape changes: ResNet's option B, as nas_common's
    "resnet" space) and ReLU(branch + skip). A derived network with every gate on is ResNet-`depth`.
    This is the official code's `-arch ResNet` (ResCNF without shortcuts).
    """
    depth, widths = int(net["depth"]), [int(w) for w in net["widths"]]
    return _residual_graph("bsn-resnet", net, (depth - 2) // 6, widths, "")


def rescnf_graph(net: dict[str, Any]) -> SuperGraph:
    """ResCNF, the official code's residual fabric (`-arch ResCNF`, shift "slr"): B-ResNet plus shortcuts.

    `net`: `blocks` per stage (3: ResNet-20's layout), stage `widths` (16, 32, 64) and `shift` (which
    source rules of `shortcut_sources` apply; "slr" is the official default, "" gives B-ResNet). Every
    block of a stage s > 0 gets, from each of its source nodes in stage s-1, a gated basic block and a
    gated 1x1 projection skip into its addition, so a derived network can mix the classic ResNet path
    with cross-stage paths of other costs. With shortcuts and shortcut skips off it is ResNet.
    """
    widths = [int(w) for w in net["widths"]]
    return _residual_graph("bsn-rescnf", net, int(net["blocks"]), widths, str(net.get("shift", "slr")))


def cnf_scales(h: int, w: int) -> list[tuple[int, int]]:
    """The fabric's resolutions: halving from (h, w) down to 1x1 (log2(size)+1 scales: 6 for 32x32)."""
    sizes = [(h, w)]
    while sizes[-1] != (1, 1):
        sizes.append(_half(sizes[-1]))
    return sizes


def cnf_graph(net: dict[str, Any]) -> SuperGraph:
    """B-CNF: a convolutional neural fabric of `layers` x scales aggregation nodes, C channels each.

    Layer 0: the stem (3x3 conv + BN + ReLU) at scale 0 and a gated chain of stride-2 3x3 convs down
    the scales. Layer l > 0: node (l, s) = ReLU(sum of gated 3x3 conv + BN edges from (l-1, s-1)
    (stride 2), (l-1, s) and (l-1, s+1) (nearest upsampling first)). The last layer also chains down
    the scales (stride-2 edges (L-1, s-1) -> (L-1, s)) to the 1x1 output node, then the classifier.
    """
    layers, c = int(net["layers"]), int(net["channels"])
    cin_img, h, w = (int(v) for v in net["input"])
    sizes = cnf_scales(h, w)
    nscales = len(sizes)
    nodes: list[Node] = [Node("l0s0", "input", (), (c, h, w))]
    where: dict[tuple[int, int], int] = {(0, 0): 0}

    def edge(src: tuple[int, int], dst: tuple[int, int]) -> int:
        s_src, s_dst = src[1], dst[1]
        size = sizes[s_dst]
        if s_src == s_dst - 1:
            op = {"type": "conv_bn", "cin": c, "cout": c, "k": 3, "stride": 2}
        elif s_src == s_dst:
            op = {"type": "conv_bn", "cin": c, "cout": c, "k": 3, "stride": 1}
        else:
            op = {"type": "up_conv_bn", "cin": c, "cout": c, "size": list(size)}
        nodes.append(Node(f"l{dst[0]}_s{s_src}to{s_dst}" + ("z" if src[0] == dst[0] else ""), "module",
                          (where[src],), (c, *size), op, steps=1))
        return len(nodes) - 1

    for s in range(1, nscales):
        e = edge((0, s - 1), (0, s))
        nodes.append(Node(f"l0s{s}", "add", (e,), (c, *sizes[s])))
        where[(0, s)] = len(nodes) - 1
    for layer in range(1, layers):
        last = layer == layers - 1
        for s in range(nscales):
            ins = [edge((layer - 1, t), (layer, s)) for t in (s - 1, s, s + 1) if 0 <= t < nscales]
            if last and s > 0:
                ins.append(edge((layer, s - 1), (layer, s)))
            nodes.append(Node(f"l{layer}s{s}", "add", tuple(ins), (c, *sizes[s])))
            where[(layer, s)] = len(nodes) - 1
    # the output must be the last node: the 1x1 scale of the last layer is appended last already
    return SuperGraph(
        space="bsn-cnf", net=dict(net),
        stem={"type": "conv_bn", "cin": cin_img, "cout": c, "k": 3, "stride": 1, "relu": True},
        head={"type": "head", "cin": c, "num_classes": int(net["num_classes"])},
        nodes=tuple(nodes), input_shape=(cin_img, h, w))


GRAPHS = {"bsn-resnet": resnet_graph, "bsn-rescnf": rescnf_graph, "bsn-cnf": cnf_graph}


def make_graph(space: str, net: dict[str, Any]) -> SuperGraph:
    return GRAPHS[space](net)


def resnet_depth_ok(depth: int) -> bool:
    return depth >= 8 and (depth - 2) % 6 == 0


def log2_scales(h: int, w: int) -> int:
    return int(math.floor(math.log2(max(1, min(h, w))))) + 1
