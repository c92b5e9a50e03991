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
    def active(self, gates: torch.Tensor) -> torch.Tensor:
        """(B, N) bool: node i is on an input->output path of example b's sampled network.

        `gates` is (B, G) bool (gate g of example b). Boolean masks are propagated through the DAG in
        topological order (forward reachability) and back (reaching the output), vectorised over the
        batch; a node counts only if both hold, so disconnected modules cost nothing (the official
        code charges them: a bug the paper's objective does not have).
        """
        gates = gates.bool()
        b = gates.shape[0]
        n = len(self.nodes)
        gate_of = {node: g for g, node in enumerate(self.modules)}
        true = torch.ones(b, dtype=torch.bool, device=gates.device)
        false = torch.zeros(b, dtype=torch.bool, device=gates.device)
        fwd: list[torch.Tensor] = [false] * n
        for i, node in enumerate(self.nodes):
            if node.kind == "input":
                fwd[i] = true
            elif node.kind == "module":
                fwd[i] = fwd[node.inputs[0]] & gates[:, gate_of[i]]
            else:
                f = fwd[node.inputs[0]]
                for j in node.inputs[1:]:
                    f = f | fwd[j]
                fwd[i] = f
        bwd: list[torch.Tensor] = [false] * n
        cons = self.consumers
        for i in range(n - 1, -1, -1):
            if i == n - 1:
                r = true
            else:
                r = false
                for c in cons[i]:
                    r = r | bwd[c]
            if self.nodes[i].kind == "module":
                r = r & gates[:, gate_of[i]]
            bwd[i] = r
        return torch.stack(fwd, 1) & torch.stack(bwd, 1)

    def prune(self, keep: set[str] | list[str]) -> list[str]:
        """The kept module names that lie on an input->output path, in topological order."""
        keep = set(keep)
        gates = torch.tensor([[name in keep for name in self.gate_names]])
        act = self.active(gates)[0]
        return [self.nodes[i].name for i in self.modules if bool(act[i])]

    def connected(self, keep: set[str] | list[str]) -> bool:
        """Whether the kept modules connect the input to the output."""
        keep = set(keep)
        gates = torch.tensor([[name in keep for name in self.gate_names]])
        return bool(self.active(gates)[0, -1])


# ---- modules --------------------------------------------------------------------------------------

class Upsample(nn.Module):
    """Nearest-neighbour resize to a fixed size (a fabric's up edge; x2 for power-of-two inputs)."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=self.size, mode="nearest")


class BasicBranch(nn.Sequential):
    """The residual branch of a CIFAR ResNet block: conv3x3(stride)-BN-ReLU-conv3x3-BN."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))


def conv_bn(cin: int, cout: int, k: int, stride: int, relu: bool = False) -> nn.Sequential:
    conv = PointwiseConv2d(cin, cout, stride) if k == 1 else nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
    layers: list[nn.Module] = [conv, nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Head(nn.Module):
    """Global average pooling and a linear classifier."""

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def make_op(op: dict[str, Any]) -> nn.Module:
    """The nn.Module an op description stands for."""
    t = op["type"]
    if t == "basic":
        return BasicBranch(op["cin"], op["cout"], op["stride"])
    if t == "identity":
        return nn.Identity()
    if t == "conv_bn":  # k x k conv (stride) + BN; relu optional (stems)
        return conv_bn(op["cin"], op["cout"], op.get("k", 3), op.get("stride", 1), op.get("relu", False))
    if t == "up_conv_bn":  # nearest upsampling to `size`, then 3x3 conv + BN
        return nn.Sequential(Upsample(op["size"]), conv_bn(op["cin"], op["cout"], 3, 1))
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
    code: no savings); ``skip`` skips a module that is inactive for the whole batch, else is dense;
    ``gather`` runs a module only on the examples where it is active (index_select / index_copy);
    ``auto`` skips, runs whole-batch modules directly and gathers when at most `gather_below` of the
    batch needs the module (packages/bsn/benchmarks/bench_bsn.py measures the modes).
    """

    def __init__(self, graph: SuperGraph, keep: set[str] | list[str] | None = None, mode: ExecMode = "auto",
                 gather_below: float = 0.9) -> None:
        super().__init__()
        self.graph = graph
        self.mode = mode
        self.gather_below = gather_below
        self.stem = make_op(graph.stem)
        keep_set = None if keep is None else set(keep)
        self.ops = nn.ModuleDict({
            n.name: make_op(n.op) for n in graph.nodes
            if n.kind == "module" and (keep_set is None or n.name in keep_set)})
        self.head = make_op(graph.head)

    def forward(self, x: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        if active is None:
            return self._forward_static(x)
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

    def _forward_sampled(self, x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        nodes = self.graph.nodes
        b = x.shape[0]
        act_cpu = active.detach().to("cpu")
        counts = act_cpu.sum(0).tolist()  # the one host sync of a step
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
            if self.mode == "dense":
                outs[i] = None if inp is None else op(inp) * mask[:, i].view(b, 1, 1, 1)
                continue
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
                outs[i] = op(inp) * mask[:, i].view(b, 1, 1, 1)
        return self.head(self._final(outs[-1], x))


def _relu_sum(xs: list[torch.Tensor | None]) -> torch.Tensor | None:
    xs = [t for t in xs if t is not None]
    if not xs:
        return None
    s = xs[0]
    for t in xs[1:]:
        s = s + t
    return F.relu(s)


# ---- the two super networks ---------------------------------------------------------------------

def _half(hw: tuple[int, int]) -> tuple[int, int]:
    return (hw[0] + 1) // 2, (hw[1] + 1) // 2


def resnet_graph(net: dict[str, Any]) -> SuperGraph:
    """B-ResNet: a CIFAR ResNet (depth 6n+2) whose every block branch and every skip has a gate.

    Block j of stage s: a branch (conv3x3-BN-ReLU-conv3x3-BN, stride 2 at the start of stages > 0),
    a skip (identity, or 1x1 conv + BN where the shape changes: ResNet's option B, as nas_common's
    "resnet" space) and ReLU(branch + skip). A derived network with every gate on is ResNet-`depth`.
    """
    depth, widths = int(net["depth"]), [int(w) for w in net["widths"]]
    n = (depth - 2) // 6
    cin_img, h, w = (int(v) for v in net["input"])
    stem_w = widths[0]
    nodes: list[Node] = [Node("input", "input", (), (stem_w, h, w))]
    prev, cin, hw = 0, stem_w, (h, w)
    for s, width in enumerate(widths):
        for j in range(n):
            stride = 2 if (s > 0 and j == 0) else 1
            out_hw = _half(hw) if stride == 2 else hw
            shape = (width, *out_hw)
            nodes.append(Node(f"s{s}b{j}_block", "module", (prev,), shape,
                              {"type": "basic", "cin": cin, "cout": width, "stride": stride}, steps=1))
            if stride == 1 and cin == width:
                nodes.append(Node(f"s{s}b{j}_skip", "module", (prev,), shape, {"type": "identity"}, steps=0))
            else:
                nodes.append(Node(f"s{s}b{j}_skip", "module", (prev,), shape,
                                  {"type": "conv_bn", "cin": cin, "cout": width, "k": 1, "stride": stride},
                                  steps=1))
            nodes.append(Node(f"s{s}b{j}_add", "add", (len(nodes) - 2, len(nodes) - 1), shape))
            prev, cin, hw = len(nodes) - 1, width, out_hw
    return SuperGraph(
        space="bsn-resnet", net=dict(net),
        stem={"type": "conv_bn", "cin": cin_img, "cout": stem_w, "k": 3, "stride": 1, "relu": True},
        head={"type": "head", "cin": cin, "num_classes": int(net["num_classes"])},
        nodes=tuple(nodes), input_shape=(cin_img, h, w))


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


GRAPHS = {"bsn-resnet": resnet_graph, "bsn-cnf": cnf_graph}


def make_graph(space: str, net: dict[str, Any]) -> SuperGraph:
    return GRAPHS[space](net)


def resnet_depth_ok(depth: int) -> bool:
    return depth >= 8 and (depth - 2) % 6 == 0


def log2_scales(h: int, w: int) -> int:
    return int(math.floor(math.log2(max(1, min(h, w))))) + 1
