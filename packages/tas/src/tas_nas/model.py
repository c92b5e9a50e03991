"""The searchable ResNet: every conv of a nas_common "resnet" spec with a width distribution, every stage
with a depth distribution (TAS, Dong & Yang 2019).

`SearchResNet(base_spec, num_classes, input_shape, ratios)` mirrors the layout of
`nas_common.spaces.resnet.ResNet` (stem, stages of basic or bottleneck blocks, option-B projection
shortcuts where the unpruned net has them, global pool, classifier) at full width. A forward pass
samples two widths per conv and Gumbel-softmax depth weights per stage (`sample`), runs every block,
and aggregates each stage's candidate depths. The architecture parameters are `width_logits`
(convs x candidate widths, padded and masked) and `depth_logits` (stages x candidate depths).
`derive_spec()` turns their argmax into a resnet spec.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from nas_common.spaces.resnet import WIDTH_RATIOS, convs_per_block, resnet_spec, width_choices

from .ops import NEG, SearchConvBN, gumbel_softmax, select_two

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
    """The TAS super network of a full resnet spec (see the module docstring)."""

    def __init__(self, spec: dict[str, Any], num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32),
                 ratios: Sequence[float] = WIDTH_RATIOS, mix: str = "auto", init_std: float = 0.01) -> None:
        super().__init__()
        self.spec = copy.deepcopy(spec)
        self.kind, self.block = spec["kind"], spec["block"]
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.ratios = tuple(ratios)
        imagenet = self.kind == "imagenet"
        nconv = convs_per_block(self.block)
        # ---- width variables: the stem, then every conv of every block, in forward order ----------
        max_c = [spec["stem"]] + [c for stage in spec["widths"] for blk in stage for c in blk]
        self.choices: list[list[int]] = [width_choices(c, self.ratios) for c in max_c]
        k = max(len(c) for c in self.choices)
        self.num_width_choices = k
        padded = [c + [c[-1]] * (k - len(c)) for c in self.choices]
        self.register_buffer("width_values", torch.tensor(padded, dtype=torch.float32))
        self.register_buffer("width_mask", torch.tensor([[j < len(c) for j in range(k)] for c in self.choices]))
        self.depth_choices = tas_depth_choices(spec["depths"], self.kind)
        kd = max(len(c) for c in self.depth_choices)
        self.register_buffer("depth_values", torch.tensor([c + [c[-1]] * (kd - len(c)) for c in self.depth_choices]))
        self.register_buffer("depth_mask", torch.tensor([[j < len(c) for j in range(kd)] for c in self.depth_choices]))
        self.width_logits = nn.Parameter(torch.randn(len(max_c), k) * init_std)
        self.depth_logits = nn.Parameter(torch.randn(len(spec["depths"]), kd) * init_std)
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

    # ---- parameters ------------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.width_logits, self.depth_logits]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    # ---- distributions ---------------------------------------------------------------------------
    def width_probs(self) -> torch.Tensor:
        """softmax over each conv's valid widths (the plain distribution, for expected FLOPs)."""
        return torch.softmax(self.width_logits.masked_fill(~self.width_mask, NEG), dim=-1)

    def depth_probs(self) -> torch.Tensor:
        return torch.softmax(self.depth_logits.masked_fill(~self.depth_mask, NEG), dim=-1)

    def argmax_probs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One-hot distributions at the argmax width per conv and depth per stage."""
        w = self.width_logits.masked_fill(~self.width_mask, NEG).argmax(-1)
        d = self.depth_logits.masked_fill(~self.depth_mask, NEG).argmax(-1)
        return (nn.functional.one_hot(w, self.width_logits.shape[1]).to(self.width_logits.dtype),
                nn.functional.one_hot(d, self.depth_logits.shape[1]).to(self.depth_logits.dtype))

    def sample(self, tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(width indices (convs, 2), width weights (convs, 2), depth weights (stages, depths))."""
        idx, p = select_two(self.width_logits, self.width_mask, tau)
        return idx, p, gumbel_softmax(self.depth_logits, self.depth_mask, tau)

    # ---- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, sample: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Logits for `x` under a `sample()` (or any (idx, p, depth weights) of the same shapes)."""
        idx, p, dw = sample
        x = self.maxpool(self.relu(self.stem(x, idx[0], p[0])))
        for s, blocks in enumerate(self.stages):
            outs = []
            wanted = set(self.depth_choices[s])
            for b, blk in enumerate(blocks):
                ids = self.var_of[s][b]
                h = x
                for i, conv in enumerate(blk.convs):
                    h = conv(h, idx[ids[i]], p[ids[i]])
                    if i < len(blk.convs) - 1:
                        h = self.relu(h)
                sc = x if blk.downsample is None else blk.downsample(x, idx[ids[-1]], p[ids[-1]])
                x = self.relu(h + sc)
                if b + 1 in wanted:
                    outs.append(x)
            # every candidate depth's output is already at full width: aggregate them
            x = torch.einsum("d,dnchw->nchw", dw[s, : len(outs)], torch.stack(outs))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    # ---- the final architecture --------------------------------------------------------------------
    def argmax_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The argmax width choice per conv (convs,) and depth choice per stage (stages,)."""
        return (self.width_logits.masked_fill(~self.width_mask, NEG).argmax(-1),
                self.depth_logits.masked_fill(~self.depth_mask, NEG).argmax(-1))

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
