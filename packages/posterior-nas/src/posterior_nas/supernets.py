"""The paper's supernets (SupNet-M, SupNet-MI, SupNet-R), as plans and as modules.

A `Plan` is the shape of a supernet computed from its `net` dict (no weights): its blocks, its
architecture groups (one per (layer, kernel-size group) = one `GatedConv`, named like
``s1.b0.p1.conv2``), the rule that turns raw masks into *effective* ones (an op whose channels are
all dropped vanishes, and whatever only fed it goes too), and the MACs/params of any batch of masks
in closed form (vectorised over masks, no network built).

`Plan.build(keep)` builds the network: with `keep=None` the gated supernet; with `keep` (kept input
channel indices per group, effective) the physically pruned network, in which dropped channels and
vanished ops are removed, not masked. The pruned network uses the same module names as the supernet,
so `inherit_weights` can slice the supernet's weights into it.

SupNet-M (shake-shake 26 2x96d layout): stem conv3x3 (16) + BN; 3 stages x 4 blocks; each block =
two parallel paths ReLU-conv3x3-BN-ReLU-conv3x3-BN, summed with the skip (no shake: the dropout
gates are the stochastic part); the down-sampling skip is ReLU + two 1x1 convs on the input and on
the input shifted by one pixel, concatenated, BN (shake-shake). Widths 96/192/384 (26.2M params, the
paper's Table 3). SupNet-MI: the same at widths 160/320/640, 72.7M params as in the paper's Table 3
(its text says "doubling", which would give 104.7M). Searched groups: both convs of every path; the
stem, the skips and the classifier are fixed.

SupNet-R: ResNet-50 (v1.5, stride on the middle conv) whose 3x3 conv is replaced by four parallel
branches with width/4 outputs each: 1x1, 3x3, 3x3 dilated 2 ("5x5") and 5x5 dilated 2 ("9x9"),
each with its own BN, concatenated. Searched groups per bottleneck: conv1, each branch, conv3.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas_common.ops import PointwiseConv2d

from .gates import GatedConv, fold_mul

R_BRANCHES: tuple[tuple[str, int, int], ...] = (("k1", 1, 1), ("k3", 3, 1), ("k5", 3, 2), ("k9", 5, 2))
"""SupNet-R's kernel-size groups: (name by receptive field, kernel, dilation)."""

Masks = dict[str, torch.Tensor]
Keep = dict[str, torch.Tensor]


def _out(h: int, stride: int) -> int:
    return (h - 1) // stride + 1


@dataclass(frozen=True)
class BlockPlan:
    """One residual block of a supernet: channels, stride and feature-map sizes."""

    prefix: str  # "s0.b0"
    cin: int
    cout: int
    width: int  # channels inside the block (M: cout; R: the bottleneck width)
    stride: int
    hin: int
    win: int
    hout: int
    wout: int

    @property
    def projection(self) -> bool:
        return self.cin != self.cout or self.stride != 1


# ---- modules --------------------------------------------------------------------------------------

def _idx(keep: Keep | None, name: str, full: int) -> torch.Tensor | None:
    """The in_idx of a pruned conv: None when every channel is kept (no gather needed)."""
    if keep is None:
        return None
    k = keep[name]
    return None if k.numel() == full else k


class MPath(nn.Module):
    """ReLU-conv3x3-BN-ReLU-conv3x3-BN; vanishes (outputs 0) when either conv keeps no channel."""

    def __init__(self, bp: BlockPlan, name: str, keep: Keep | None, gk: dict[str, Any]) -> None:
        super().__init__()
        mid = bp.cout if keep is None else int(keep[f"{name}.conv2"].numel())
        self.conv1 = GatedConv(bp.cin, mid, 3, bp.stride, in_idx=_idx(keep, f"{name}.conv1", bp.cin), **gk)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = GatedConv(mid, bp.cout, 3, 1, **gk)
        self.bn2 = nn.BatchNorm2d(bp.cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn1(self.conv1(F.relu(x)))
        h = self.bn2(self.conv2(F.relu(h)))
        a1, a2 = self.conv1.alive(), self.conv2.alive()
        return h if a1 is None else fold_mul(h, a1 * a2)


class MShortcut(nn.Module):
    """The shake-shake down-sampling skip: ReLU, two 1x1 convs (one on the input shifted by a pixel), BN."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv_a = nn.Conv2d(cin, cout // 2, 1, bias=False)
        self.conv_b = nn.Conv2d(cin, cout - cout // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        s = self.stride
        a = x[:, :, ::s, ::s]
        b = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))[:, :, ::s, ::s]
        return self.bn(torch.cat([self.conv_a(a), self.conv_b(b)], 1))


class MBlock(nn.Module):
    def __init__(self, bp: BlockPlan, keep: Keep | None, gk: dict[str, Any]) -> None:
        super().__init__()
        self.shortcut = MShortcut(bp.cin, bp.cout, bp.stride) if bp.projection else None
        self.paths = nn.ModuleDict()
        for j in range(2):
            name = f"{bp.prefix}.p{j}"
            if keep is None or keep[f"{name}.conv1"].numel() > 0:
                self.paths[f"p{j}"] = MPath(bp, name, keep, gk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.shortcut is None else self.shortcut(x)
        for path in self.paths.values():
            out = out + path(x)
        return out


class RBranch(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, dilation: int, stride: int, in_idx: torch.Tensor | None,
                 gk: dict[str, Any]) -> None:
        super().__init__()
        self.conv = GatedConv(cin, cout, kernel, stride, dilation, in_idx=in_idx, **gk)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.conv(x)))
        a = self.conv.alive()
        return h if a is None else fold_mul(h, a)


class RBody(nn.Module):
    """conv1x1-BN-ReLU, the four parallel branches (concatenated), conv1x1-BN."""

    def __init__(self, bp: BlockPlan, keep: Keep | None, gk: dict[str, Any]) -> None:
        super().__init__()
        p, w, q = bp.prefix, bp.width, bp.width // 4
        if keep is None:
            union: torch.Tensor | None = None
            outs = {b: q for b, _, _ in R_BRANCHES}
            mid, n3 = w, w
        else:
            kept_b = [keep[f"{p}.{b}"] for b, _, _ in R_BRANCHES]
            union = torch.unique(torch.cat(kept_b)) if kept_b else torch.zeros(0, dtype=torch.long)
            k3 = keep[f"{p}.conv3"]
            outs = {b: int(((k3 >= i * q) & (k3 < (i + 1) * q)).sum()) for i, (b, _, _) in enumerate(R_BRANCHES)}
            mid, n3 = int(union.numel()), int(k3.numel())
        self.conv1 = GatedConv(bp.cin, mid, 1, in_idx=_idx(keep, f"{p}.conv1", bp.cin), **gk)
        self.bn1 = nn.BatchNorm2d(mid)
        self.branches = nn.ModuleDict()
        for b, k, d in R_BRANCHES:
            if keep is not None and keep[f"{p}.{b}"].numel() == 0:
                continue
            in_idx = None
            if union is not None:
                pos = torch.searchsorted(union, keep[f"{p}.{b}"])
                in_idx = None if pos.numel() == mid else pos
            self.branches[b] = RBranch(mid, outs[b], k, d, bp.stride, in_idx, gk)
        self.conv3 = GatedConv(n3, bp.cout, 1, **gk)
        self.bn3 = nn.BatchNorm2d(bp.cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = torch.cat([br(h) for br in self.branches.values()], 1)
        out = self.bn3(self.conv3(h))
        a1 = self.conv1.alive()
        if a1 is None:
            return out
        m3 = self.conv3.hard_mask
        used = torch.cat([br.conv.alive() for br in self.branches.values()], 1)  # (M, 4)
        used = used * (m3.view(m3.shape[0], len(self.branches), -1).amax(2) > 0).to(used.dtype)
        return fold_mul(out, a1 * used.amax(1, keepdim=True))


class RBlock(nn.Module):
    def __init__(self, bp: BlockPlan, keep: Keep | None, gk: dict[str, Any]) -> None:
        super().__init__()
        self.shortcut = (nn.Sequential(PointwiseConv2d(bp.cin, bp.cout, bp.stride), nn.BatchNorm2d(bp.cout))
                         if bp.projection else None)
        alive = keep is None or keep[f"{bp.prefix}.conv1"].numel() > 0
        self.body = RBody(bp, keep, gk) if alive else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.shortcut is None else self.shortcut(x)
        if self.body is not None:
            out = out + self.body(x)
        return F.relu(out)


class SupNet(nn.Module):
    """A supernet (gated, `keep=None`) or a pruned network of it. `plan` is kept as a plain attribute."""

    def __init__(self, plan: Plan, keep: Keep | None = None, p_init: float = 0.1, temperature: float = 0.2) -> None:
        super().__init__()
        self.plan = plan
        gk = {"gated": keep is None, "p_init": p_init, "temperature": temperature}
        self.stem = plan.make_stem()
        block_cls = MBlock if plan.kind == "M" else RBlock
        self.blocks = nn.ModuleList([block_cls(bp, keep, gk) for bp in plan.blocks])
        self.final_relu = plan.kind == "M"
        self.fc = nn.Linear(plan.blocks[-1].cout, plan.num_classes)
        self._gates: dict[str, GatedConv] = {}
        if keep is None:
            self._gates = {g: self.get_submodule(plan.module_of(g)) for g, _ in plan.groups}

    @property
    def gates(self) -> dict[str, GatedConv]:
        """Group name -> its GatedConv, in the plan's order (empty for a pruned network)."""
        return self._gates

    def fix_drop_rates(self) -> SupNet:
        """Freeze every group's drop rate at its current value and train with hard Bernoulli dropout at it
        (the paper's "Random" baseline: a supernet trained with predefined, fixed dropout)."""
        for g in self._gates.values():
            g.p_logit.requires_grad_(False)
            g.fixed_rate = True
        return self

    def drop_rates(self) -> torch.Tensor:
        """The learned drop rate of every group, in the plan's order: (n_groups,)."""
        return torch.stack([g.p for g in self._gates.values()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from_stem(self.stem(x))

    def forward_from_stem(self, h: torch.Tensor) -> torch.Tensor:
        """The logits from the stem's output: the stem carries no architecture variable, so scoring many
        masks on the same images can compute it once (`score_masks`)."""
        for block in self.blocks:
            h = block(h)
        if self.final_relu:
            h = F.relu(h)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))

    @contextmanager
    def masked(self, masks: torch.Tensor) -> Iterator[None]:
        """Run with hard masks: `masks` (M, K) {0,1} over the plan's flat channel layout; a batch of
        M*n images is read as M blocks of n (block i under mask i)."""
        if not self._gates:
            raise RuntimeError("hard masks apply to the gated supernet, not to a pruned network")
        parts = torch.split(masks, self.plan.sizes, dim=1)
        dtype = next(self.parameters()).dtype
        try:
            for gate, m in zip(self._gates.values(), parts, strict=False):
                gate.hard_mask = m.to(dtype)
            yield
        finally:
            for gate in self._gates.values():
                gate.hard_mask = None


# ---- plans ------------------------------------------------------------------------------------------

class Plan:
    """The shape of a supernet (from its validated `net` dict): blocks, groups, masks -> costs."""

    kind = ""

    def __init__(self, net: dict[str, Any]) -> None:
        self.net = net
        self.num_classes = int(net["num_classes"])
        self.input = tuple(net["input"])
        self.blocks: list[BlockPlan] = []
        self._make_blocks()
        self.groups: list[tuple[str, int]] = [g for bp in self.blocks for g in self.block_groups(bp)]
        self.names = [g for g, _ in self.groups]
        self.sizes = [c for _, c in self.groups]
        self.num_channels = sum(self.sizes)

    # subclasses
    def _make_blocks(self) -> None:
        raise NotImplementedError

    def make_stem(self) -> nn.Module:
        raise NotImplementedError

    def block_groups(self, bp: BlockPlan) -> list[tuple[str, int]]:
        raise NotImplementedError

    def module_of(self, group: str) -> str:
        raise NotImplementedError

    def _effective_block(self, bp: BlockPlan, m: Masks) -> None:
        raise NotImplementedError

    def _block_costs(self, bp: BlockPlan, m: Masks) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _inherit_block(self, i: int, bp: BlockPlan, keep: Keep, out: dict[str, tuple]) -> None:
        raise NotImplementedError

    # shared
    def split(self, masks: torch.Tensor) -> Masks:
        """Flat (M, K) masks -> group name -> (M, C_g) bool."""
        return dict(zip(self.names, torch.split(masks.bool(), self.sizes, dim=1), strict=False))

    def join(self, masks: Masks) -> torch.Tensor:
        return torch.cat([masks[g] for g in self.names], 1)

    def effective(self, masks: torch.Tensor) -> torch.Tensor:
        """Flat (M, K) masks with vanished ops applied: a conv whose group keeps no channel vanishes, and
        so do the channels and ops that only fed it or only read from it. The masked supernet and the
        pruned network of the effective mask compute the same function."""
        m = {k: v.clone() for k, v in self.split(masks).items()}
        for bp in self.blocks:
            self._effective_block(bp, m)
        return self.join(m)

    def costs(self, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MACs and params (float64, (M,)) of the pruned networks of flat masks (M, K), in closed form."""
        m = self.split(self.effective(masks))
        macs = torch.zeros(masks.shape[0], dtype=torch.float64, device=masks.device)
        params = torch.zeros_like(macs)
        for bp in self.blocks:
            a, p = self._block_costs(bp, {k: v.to(torch.float64) for k, v in m.items()})
            macs += a
            params += p
        const = fixed_costs(self)
        return macs + const["macs"], params + const["params"]

    def keep_of(self, masks: torch.Tensor) -> Keep:
        """One flat mask (K,) -> group -> kept channel indices (CPU long), after `effective`."""
        eff = self.split(self.effective(masks.reshape(1, -1)))
        return {g: torch.nonzero(v[0].cpu()).flatten() for g, v in eff.items()}

    def build(self, keep: Keep | None = None, p_init: float = 0.1, temperature: float = 0.2) -> SupNet:
        return SupNet(self, keep, p_init=p_init, temperature=temperature)

    def inherit_index(self, keep: Keep) -> dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]:
        """Module name -> (out indices, in indices) into the supernet's tensors of that module."""
        out: dict[str, tuple] = {}
        for i, bp in enumerate(self.blocks):
            self._inherit_block(i, bp, keep, out)
        return out


class MPlan(Plan):
    """SupNet-M / SupNet-MI: net = {width, blocks: [n1, n2, n3], stem, stem_stride}.

    `stem_stride` 1 is the paper's CIFAR network; 2 halves the feature maps (a cheap CPU variant)."""

    kind = "M"

    def _make_blocks(self) -> None:
        c, h, w = self.input
        stem = int(self.net["stem"])
        width = int(self.net["width"])
        ss = int(self.net.get("stem_stride", 1))
        h, w = _out(h, ss), _out(w, ss)
        cin = stem
        for s, n in enumerate(self.net["blocks"]):
            cout = width * 2**s
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                ho, wo = _out(h, stride), _out(w, stride)
                self.blocks.append(BlockPlan(f"s{s}.b{b}", cin, cout, cout, stride, h, w, ho, wo))
                cin, h, w = cout, ho, wo

    def make_stem(self) -> nn.Module:
        stem = int(self.net["stem"])
        ss = int(self.net.get("stem_stride", 1))
        return nn.Sequential(nn.Conv2d(self.input[0], stem, 3, ss, padding=1, bias=False), nn.BatchNorm2d(stem))

    def block_groups(self, bp: BlockPlan) -> list[tuple[str, int]]:
        return [(f"{bp.prefix}.p{j}.{c}", bp.cin if c == "conv1" else bp.cout) for j in range(2)
                for c in ("conv1", "conv2")]

    def module_of(self, group: str) -> str:
        prefix, path, conv = group.rsplit(".", 2)
        i = next(i for i, bp in enumerate(self.blocks) if bp.prefix == prefix)
        return f"blocks.{i}.paths.{path}.{conv}"

    def _effective_block(self, bp: BlockPlan, m: Masks) -> None:
        for j in range(2):
            n1, n2 = f"{bp.prefix}.p{j}.conv1", f"{bp.prefix}.p{j}.conv2"
            alive = (m[n1].any(1) & m[n2].any(1))[:, None]
            m[n1] &= alive
            m[n2] &= alive

    def _block_costs(self, bp: BlockPlan, m: Masks) -> tuple[torch.Tensor, torch.Tensor]:
        hw = bp.hout * bp.wout
        macs = params = 0.0
        for j in range(2):
            n1 = m[f"{bp.prefix}.p{j}.conv1"].sum(1)
            n2 = m[f"{bp.prefix}.p{j}.conv2"].sum(1)
            alive = (n2 > 0).to(n2.dtype)
            macs = macs + 9 * hw * n1 * n2 + 9 * hw * n2 * bp.cout
            params = params + 9 * n1 * n2 + 2 * n2 + 9 * n2 * bp.cout + 2 * bp.cout * alive
        return macs, params

    def _inherit_block(self, i: int, bp: BlockPlan, keep: Keep, out: dict[str, tuple]) -> None:
        for j in range(2):
            k1, k2 = keep[f"{bp.prefix}.p{j}.conv1"], keep[f"{bp.prefix}.p{j}.conv2"]
            base = f"blocks.{i}.paths.p{j}"
            out[f"{base}.conv1.conv"] = (k2, k1)
            out[f"{base}.bn1"] = (k2, None)
            out[f"{base}.conv2.conv"] = (None, k2)


class RPlan(Plan):
    """SupNet-R (ResNet-50 with multi-kernel branches): net = {width, blocks: [3, 4, 6, 3]}."""

    kind = "R"

    def _make_blocks(self) -> None:
        c, h, w = self.input
        width = int(self.net["width"])
        h, w = _out(_out(h, 2), 2), _out(_out(w, 2), 2)  # conv7x7/2, maxpool/2
        cin = width
        for s, n in enumerate(self.net["blocks"]):
            mid = width * 2**s
            cout = 4 * mid
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                ho, wo = _out(h, stride), _out(w, stride)
                self.blocks.append(BlockPlan(f"s{s}.b{b}", cin, cout, mid, stride, h, w, ho, wo))
                cin, h, w = cout, ho, wo

    def make_stem(self) -> nn.Module:
        width = int(self.net["width"])
        return nn.Sequential(nn.Conv2d(self.input[0], width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                             nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))

    def block_groups(self, bp: BlockPlan) -> list[tuple[str, int]]:
        return ([(f"{bp.prefix}.conv1", bp.cin)] + [(f"{bp.prefix}.{b}", bp.width) for b, _, _ in R_BRANCHES]
                + [(f"{bp.prefix}.conv3", bp.width)])

    def module_of(self, group: str) -> str:
        prefix, g = group.rsplit(".", 1)
        i = next(i for i, bp in enumerate(self.blocks) if bp.prefix == prefix)
        return f"blocks.{i}.body.{g}" if g.startswith("conv") else f"blocks.{i}.body.branches.{g}.conv"

    def _effective_block(self, bp: BlockPlan, m: Masks) -> None:
        p, q = bp.prefix, bp.width // 4
        m1, m3 = m[f"{p}.conv1"], m[f"{p}.conv3"]
        a1 = m1.any(1)
        used = torch.stack([m[f"{p}.{b}"].any(1) & m3[:, i * q:(i + 1) * q].any(1) & a1
                            for i, (b, _, _) in enumerate(R_BRANCHES)], 1)  # (M, 4)
        alive = used.any(1)
        m1 &= alive[:, None]
        for i, (b, _, _) in enumerate(R_BRANCHES):
            m[f"{p}.{b}"] &= used[:, i:i + 1]
        m3 &= used.repeat_interleave(q, dim=1)

    def _block_costs(self, bp: BlockPlan, m: Masks) -> tuple[torch.Tensor, torch.Tensor]:
        p, q = bp.prefix, bp.width // 4
        m1, m3 = m[f"{p}.conv1"], m[f"{p}.conv3"]
        n1, n3 = m1.sum(1), m3.sum(1)
        alive = (n3 > 0).to(n3.dtype)
        union = torch.stack([m[f"{p}.{b}"] for b, _, _ in R_BRANCHES], 0).amax(0).sum(1)
        hw_in, hw = bp.hin * bp.win, bp.hout * bp.wout
        macs = hw_in * n1 * union + hw * n3 * bp.cout
        params = n1 * union + 2 * union + n3 * bp.cout + 2 * bp.cout * alive
        for i, (b, k, _) in enumerate(R_BRANCHES):
            nb = m[f"{p}.{b}"].sum(1)
            ob = m3[:, i * q:(i + 1) * q].sum(1)
            macs = macs + k * k * hw * nb * ob
            params = params + k * k * nb * ob + 2 * ob
        return macs, params

    def _inherit_block(self, i: int, bp: BlockPlan, keep: Keep, out: dict[str, tuple]) -> None:
        p, q = bp.prefix, bp.width // 4
        base = f"blocks.{i}.body"
        kb = {b: keep[f"{p}.{b}"] for b, _, _ in R_BRANCHES}
        union = torch.unique(torch.cat(list(kb.values())))
        k3 = keep[f"{p}.conv3"]
        out[f"{base}.conv1.conv"] = (union, keep[f"{p}.conv1"])
        out[f"{base}.bn1"] = (union, None)
        for j, (b, _, _) in enumerate(R_BRANCHES):
            ob = k3[(k3 >= j * q) & (k3 < (j + 1) * q)] - j * q
            out[f"{base}.branches.{b}.conv.conv"] = (ob, kb[b])
            out[f"{base}.branches.{b}.bn"] = (ob, None)
        out[f"{base}.conv3.conv"] = (None, k3)


PLANS: dict[str, type[Plan]] = {"M": MPlan, "R": RPlan}


@functools.lru_cache(maxsize=64)
def _fixed_costs(kind: str, net_json: str) -> tuple[float, float]:
    from nas_common.costs import count_costs

    plan = PLANS[kind](json.loads(net_json))
    keep = plan.keep_of(torch.zeros(plan.num_channels, dtype=torch.bool))
    c = count_costs(plan.build(keep), plan.input)
    return c["macs"], c["params"]


def fixed_costs(plan: Plan) -> dict[str, float]:
    """Costs of what no mask can remove (stem, skips, classifier): the network with every group dropped."""
    macs, params = _fixed_costs(plan.kind, json.dumps(plan.net, sort_keys=True))
    return {"macs": macs, "params": params}


def inherit_weights(pruned: SupNet, supernet: nn.Module, keep: Keep) -> SupNet:
    """Load into `pruned` (built from `keep`) the supernet's weights, sliced to the kept channels."""
    index = pruned.plan.inherit_index(keep)
    src = supernet.state_dict()
    new = {}
    for name, _t in pruned.state_dict().items():
        s = src[name]
        module = name.rsplit(".", 1)[0]
        if module in index and s.dim() >= 1:
            o, i = index[module]
            if o is not None:
                s = s.index_select(0, o.to(s.device))
            if i is not None and s.dim() >= 2:
                s = s.index_select(1, i.to(s.device))
        new[name] = s
    pruned.load_state_dict(new)
    return pruned
