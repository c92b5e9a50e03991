"""The searchable ResNet: every conv of a nas_common "resnet" spec with a width distribution, every stage
with a depth distribution (TAS, Dong & Yang 2019).

`SearchResNet(base_spec, num_classes, input_shape, ratios)` mirrors the layout of
`nas_common.spaces.resnet.ResNet` (stem, stages of basic or bottleneck blocks, option-B projection
shortcuts where the unpruned net has them, global pool, classifier) at full width. A forward pass
samples K widths per conv (2 in the paper) and Gumbel-softmax depth weights per stage (`sample`), runs
every block, and aggregates each stage's candidate depths. Activations are aligned as in TAS: each
conv's candidates to the largest sampled width, the next conv's input zero-padded to its full width,
residuals added into the first channels, a stage's candidate depths to the largest width among them,
the classifier on the first columns of its weight (see `ops` for how that stays fixed-shape). The
architecture parameters are `width_logits` (convs x candidate widths, padded and masked) and
`depth_logits` (stages x candidate depths).
`derive_spec()` turns their argmax into a resnet spec.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from nas_common.spaces.resnet import WIDTH_RATIOS, convs_per_block, resnet_spec, width_choices

from .ops import DENSE_MAX_WIDTH, NEG, SearchConvBN, cwi_apply, gumbel_softmax, mix_plan, select_k, widest_first

__all__ = ["SearchResNet", "tas_depth_choices", "base_spec", "spec_from_indices"]


def tas_depth_choices(depths: Sequence[int], kind: str = "cifar") -> list[list[int]]:
    """TAS's candidate depths per stage.

    CIFAR: 1, 3, 5, ..., plus n itself (n <= 3: every depth 1..n, so ResNet-20 gets 1, 2, 3), as the
    official `get_depth_choices`. ImageNet: int(n * j / min_n) for j = 1..min_n (ResNet-18: 1, 2 per stage).
    """
    out = []
    if kind == "imagenet":
        lo = min(depths)
        for n in depths:
            out.append(sorted({max(1, int(n * j / lo)) for j in range(1, lo + 1)}))
        return out
    for n in depths:
        out.append(list(range(1, n + 1)) if n <= 3 else sorted(set(range(1, n + 1, 2)) | {n}))
    return out


def base_spec(name: str) -> dict[str, Any]:
    """The resnet spec of a base network by name: resnet20/32/44/56/110/164 (CIFAR), resnet18/50 (ImageNet)."""
    depth = int(name.removeprefix("resnet"))
    return resnet_spec(depth, "imagenet" if depth in (18, 34, 50, 101, 152) else "cifar")


class SearchResNet(nn.Module):
    """The TAS super network of a full resnet spec (see the module docstring).

    `k`: how many widths each conv samples and mixes (2 in the paper). `search_width` / `search_depth`
    False fix that dimension at the unpruned network's (TAS(D) searches depths only, TAS(W) widths
    only): its distributions are one-hot at the full width / depth and its logits are not trained.
    """

    def __init__(self, spec: dict[str, Any], num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32),
                 ratios: Sequence[float] = WIDTH_RATIOS, mix: str = "auto", init_std: float = 0.01, k: int = 2,
                 search_width: bool = True, search_depth: bool = True) -> None:
        super().__init__()
        self.spec = copy.deepcopy(spec)
        self.kind, self.block = spec["kind"], spec["block"]
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.ratios = tuple(ratios)
        self.k = int(k)
        self.search_width, self.search_depth = bool(search_width), bool(search_depth)
        imagenet = self.kind == "imagenet"
        nconv = convs_per_block(self.block)
        # ---- width variables: the stem, then every conv of every block, in forward order ----------
        max_c = [spec["stem"]] + [c for stage in spec["widths"] for blk in stage for c in blk]
        self.choices: list[list[int]] = [width_choices(c, self.ratios) for c in max_c]
        kw = max(len(c) for c in self.choices)
        if not 1 <= self.k <= kw:
            raise ValueError(f"k={k} widths per conv: need 1 <= k <= {kw} (the number of candidate widths)")
        self.num_width_choices = kw
        padded = [c + [c[-1]] * (kw - len(c)) for c in self.choices]
        self.register_buffer("width_values", torch.tensor(padded, dtype=torch.float32))
        self.register_buffer("width_int", torch.tensor(padded, dtype=torch.long), persistent=False)
        self.register_buffer("width_mask", torch.tensor([[j < len(c) for j in range(kw)] for c in self.choices]))
        self.depth_choices = tas_depth_choices(spec["depths"], self.kind)
        kd = max(len(c) for c in self.depth_choices)
        self.register_buffer("depth_values", torch.tensor([c + [c[-1]] * (kd - len(c)) for c in self.depth_choices]))
        self.register_buffer("depth_mask", torch.tensor([[j < len(c) for j in range(kd)] for c in self.depth_choices]))
        self.width_logits = nn.Parameter(torch.randn(len(max_c), kw) * init_std)
        self.depth_logits = nn.Parameter(torch.randn(len(spec["depths"]), kd) * init_std)
        # the unpruned choice of every conv / stage: what a dimension that is not searched keeps
        self.register_buffer("full_width_index", self.width_mask.sum(-1) - 1, persistent=False)
        self.register_buffer("full_depth_index", self.depth_mask.sum(-1) - 1, persistent=False)
        # ---- modules ---------------------------------------------------------------------------
        c0 = self.input_shape[0]
        self.stem = SearchConvBN(c0, spec["stem"], 7 if imagenet else 3, 2 if imagenet else 1, padded[0], mix)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if imagenet else nn.Identity()
        self.relu = nn.ReLU()
        self.stages = nn.ModuleList()
        self.var_of: list[list[list[int]]] = []  # [stage][block][conv] -> width variable
        v, c = 1, spec["stem"]
        for s, (d, stage) in enumerate(zip(spec["depths"], spec["widths"], strict=False)):
            blocks, vars_s = nn.ModuleList(), []
            for b in range(d):
                stride = 2 if (s > 0 and b == 0) else 1
                ws = stage[b]
                ids = list(range(v, v + nconv))
                v += nconv
                blk = nn.Module()
                if self.block == "basic":
                    kernels, strides = (3, 3), (stride, 1)
                else:
                    kernels, strides = (1, 3, 1), (1, stride, 1)
                c_in = c
                convs = []
                for i in range(nconv):
                    convs.append(SearchConvBN(c_in, ws[i], kernels[i], strides[i], padded[ids[i]], mix))
                    c_in = ws[i]
                blk.convs = nn.ModuleList(convs)
                # the projection shortcut reuses the block's last conv's width sample (as TAS)
                blk.downsample = (SearchConvBN(c, ws[-1], 1, stride, padded[ids[-1]], mix)
                                  if (stride != 1 or c != ws[-1]) else None)
                blocks.append(blk)
                vars_s.append(ids)
                c = ws[-1]
            self.stages.append(blocks)
            self.var_of.append(vars_s)
        self.fc = nn.Linear(c, self.num_classes)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        # width variables grouped by (full width, mix kind): their mix plans are computed together
        convs_of: dict[int, SearchConvBN] = {0: self.stem}
        for blocks, vars_s in zip(self.stages, self.var_of, strict=True):
            for blk, ids in zip(blocks, vars_s, strict=True):
                convs_of.update(zip(ids, blk.convs, strict=True))
        groups: dict[tuple[int, bool], list[int]] = {}
        for v in range(len(max_c)):
            groups.setdefault((convs_of[v].c_out, convs_of[v].mix == "dense"), []).append(v)
        self.plan_groups: list[tuple[int, bool, str]] = []
        self.plan_slot: dict[int, tuple[int, int]] = {}  # var -> (group, row)
        for g, ((width, dense), ids) in enumerate(groups.items()):
            self.register_buffer(f"plan_ids{g}", torch.tensor(ids, dtype=torch.long), persistent=False)
            self.plan_groups.append((width, dense, f"plan_ids{g}"))
            self.plan_slot.update({v: (g, r) for r, v in enumerate(ids)})

    # ---- parameters ------------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """The logits the architecture step trains (only those of the searched dimensions)."""
        return ([self.width_logits] if self.search_width else []) + ([self.depth_logits] if self.search_depth else [])

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(self.width_logits), id(self.depth_logits)}
        return [p for p in self.parameters() if id(p) not in arch]

    # ---- distributions ---------------------------------------------------------------------------
    def _full_width(self) -> torch.Tensor:
        return nn.functional.one_hot(self.full_width_index, self.width_logits.shape[1]).to(self.width_logits.dtype)

    def _full_depth(self) -> torch.Tensor:
        return nn.functional.one_hot(self.full_depth_index, self.depth_logits.shape[1]).to(self.depth_logits.dtype)

    def width_probs(self) -> torch.Tensor:
        """softmax over each conv's valid widths (the plain distribution, for expected FLOPs)."""
        if not self.search_width:
            return self._full_width()
        return torch.softmax(self.width_logits.masked_fill(~self.width_mask, NEG), dim=-1)

    def depth_probs(self) -> torch.Tensor:
        if not self.search_depth:
            return self._full_depth()
        return torch.softmax(self.depth_logits.masked_fill(~self.depth_mask, NEG), dim=-1)

    def argmax_probs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One-hot distributions at the argmax width per conv and depth per stage."""
        w, d = self.argmax_indices()
        return (nn.functional.one_hot(w, self.width_logits.shape[1]).to(self.width_logits.dtype),
                nn.functional.one_hot(d, self.depth_logits.shape[1]).to(self.depth_logits.dtype))

    def sample(self, tau: float, noise: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(width indices (convs, k), width weights (convs, k), depth weights (stages, depths)).

        `noise` = (G1, G2, G_depth) fixes the Gumbel noise (tests): see `select_k`, `gumbel_softmax`.
        """
        n1, n2, nd = noise if noise is not None else (None, None, None)
        if self.search_width:
            idx, p = select_k(self.width_logits, self.width_mask, tau, self.k, None if n1 is None else (n1, n2))
        else:
            idx = self.full_width_index[:, None].expand(-1, self.k)
            p = self.width_logits.new_zeros(idx.shape)
            p[:, 0] = 1.0  # the full width, once (any further picks repeat it with weight 0)
        dw = gumbel_softmax(self.depth_logits, self.depth_mask, tau, nd) if self.search_depth else self._full_depth()
        return idx, p, dw

    # ---- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, sample: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Logits for `x` under a `sample()` (or any (idx, p, depth weights) of the same shapes).

        Every activation is kept at its layer's full width, zero beyond its active width (see `ops`).
        The active widths follow from the sample alone: a conv's is the largest of its sampled widths,
        a block's the larger of its residual's and its last conv's (the residual add puts the narrower
        tensor into the first channels), and a stage's the largest among its candidate depths' outputs,
        to which each of them is interpolated before their weighted sum (accumulated as it goes).
        """
        idx, p, dw = sample
        idx, p, c = widest_first(idx, p, self.width_int.gather(1, idx))  # (convs, k) sampled widths
        m = c[:, 0]  # (convs,) active output width of each conv: its widest sampled width
        plans = [mix_plan(c[getattr(self, name)], m[getattr(self, name)], width, dense, p.dtype)
                 for width, dense, name in self.plan_groups]

        def plan(v: int) -> tuple[torch.Tensor, ...]:
            g, r = self.plan_slot[v]
            return tuple(t[r] for t in plans[g])

        x = self.maxpool(self.relu(self.stem(x, idx[0], p[0], c[0], m[0], plan(0))))
        width = m[0]
        for s, blocks in enumerate(self.stages):
            # active widths of every block's output, hence the stage's aggregation width
            wanted = self.depth_choices[s]
            out_w, w = [], width
            for b, blk in enumerate(blocks):
                last = m[self.var_of[s][b][-1]]
                w = last if blk.downsample is not None else torch.maximum(w, last)
                out_w.append(w)
            agg_w = torch.stack([out_w[d - 1] for d in wanted]).max()
            agg, j = None, 0
            for b, blk in enumerate(blocks):
                ids = self.var_of[s][b]
                h = x
                for i, conv in enumerate(blk.convs):
                    v = ids[i]
                    h = conv(h, idx[v], p[v], c[v], m[v], plan(v))
                    if i < len(blk.convs) - 1:
                        h = self.relu(h)
                v = ids[-1]
                sc = x if blk.downsample is None else blk.downsample(x, idx[v], p[v], c[v], m[v], plan(v))
                x = self.relu(h + sc)
                if b + 1 in wanted:  # a candidate depth: interpolate to the stage's width, add its share
                    term = cwi_apply(x, out_w[b], agg_w, dw[s, j], dense=x.shape[1] <= DENSE_MAX_WIDTH)
                    agg = term if agg is None else agg + term
                    j += 1
            x, width = agg, agg_w
        return self.fc(torch.flatten(self.avgpool(x), 1))  # zero-padded: the first columns of the weight

    # ---- the final architecture --------------------------------------------------------------------
    def argmax_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The argmax width choice per conv (convs,) and depth choice per stage (stages,); a dimension
        that is not searched keeps the unpruned network's."""
        w = (self.width_logits.masked_fill(~self.width_mask, NEG).argmax(-1) if self.search_width
             else self.full_width_index.clone())
        d = (self.depth_logits.masked_fill(~self.depth_mask, NEG).argmax(-1) if self.search_depth
             else self.full_depth_index.clone())
        return w, d

    def layout(self) -> dict[str, Any]:
        """What turns choice indices into a spec, as plain data (kept in the search result)."""
        return {"kind": self.kind, "block": self.block, "choices": self.choices,
                "depth_choices": self.depth_choices, "var_of": self.var_of}

    def derive_spec(self) -> dict[str, Any]:
        """TAS's rule: the argmax width of every conv and the argmax depth of every stage."""
        w, d = self.argmax_indices()
        return spec_from_indices(self.layout(), w.tolist(), d.tolist())


def spec_from_indices(layout: dict[str, Any], widx: Sequence[int], didx: Sequence[int]) -> dict[str, Any]:
    """The resnet spec with width choice `widx[v]` per conv variable and depth choice `didx[s]` per stage."""
    choices, var_of = layout["choices"], layout["var_of"]
    depths = [layout["depth_choices"][s][didx[s]] for s in range(len(var_of))]
    widths = [[[choices[v][widx[v]] for v in ids] for ids in vars_s[:d]]
              for vars_s, d in zip(var_of, depths, strict=True)]
    return {"kind": layout["kind"], "block": layout["block"], "stem": choices[0][widx[0]], "depths": depths,
            "widths": widths}
