"""CIFAR and ImageNet ResNets with a width per conv and a depth per stage (the space TAS and BSN prune).

The spec (the `spec` of an arch.json with `"space": "resnet"`), exactly::

    {"kind": "cifar" | "imagenet",          # stem: 3x3 conv (CIFAR) or 7x7/2 conv + 3x3/2 max-pool
     "block": "basic" | "bottleneck",       # 2 convs (3x3, 3x3) or 3 convs (1x1, 3x3, 1x1) per block
     "stem": 16,                            # output width of the stem conv
     "depths": [n1, n2, n3],                # blocks per stage (>= 1 each); stage s > 0 starts with stride 2
     "widths": [                            # per stage, per block, the output width of each conv
         [[16, 16], [16, 16], ...],         #   stage 1: depths[0] blocks of 2 (basic) or 3 (bottleneck)
         [[32, 32], ...], ...],
     "shortcuts": [[true, ...], ...]}       # optional, per block: false drops the block's residual
                                            # shortcut (a plain block); omitted = all true

* Each conv has its own output width, so TAS's "argmax width per conv, argmax depth per stage" is
  written down directly: `widths[s][b][i]` is the width of conv i of block b of stage s.
* A block's output width is the width of its last conv. The residual add must see equal widths, so the
  shortcut is the identity when the block keeps its input's width and resolution, and otherwise a
  1x1 conv (with the block's stride) + BatchNorm projection from the block input width to the block's
  output width. This is ResNet's option B (torchvision's `downsample`); it is also what TAS's pruned
  inference networks do (a 1x1 conv shortcut wherever a block's input and output widths differ, which
  happens whenever TAS prunes a last conv differently from the block before). The original CIFAR
  ResNets use option A (zero-padding, no parameters); option B adds 2,560 conv weights (+192 BN) and 0.26M MACs to the
  CIFAR nets: ResNet-20 counts 0.272M params and 40.81M MACs (published 0.27M and 40.8M; TAS's and
  BSN's figures also include the projection shortcuts), ResNet-56 0.856M / 125.7M. TAS's official CIFAR nets
  use avg-pool + 1x1 conv at stride 2, which has the same MACs and params up to BN.
* Depth: `depths[s]` blocks are used; `widths[s]` / `shortcuts[s]` may list more blocks (e.g. TAS's
  argmax widths of the full network), the extra ones are dropped when the spec is normalised. So BSN
  expresses a removed block by leaving it out (a stage's blocks after the first all have the same
  shape, so which one is removed only matters for weight inheritance), and a block without its
  residual path with `shortcuts[s][b] = false`.
* ImageNet nets use torchvision's module names and layout (`conv1`, `bn1`, `layer1.0.conv1`,
  `layer1.0.downsample.0`, `fc`, stride on the bottleneck's 3x3 conv), so `resnet18`/`resnet50`
  match `torchvision.models.resnet18/50()` parameter for parameter and load their state dicts.

The built network is a plain `nn.Module` whose forward returns logits.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..arch import Arch, register_arch
from ..costs.tables import ConvShape, shapes_macs, shapes_params
from ..errors import ArchFileError
from ..ops import PointwiseConv2d
from ..registry import SPACES
from .base import Space

__all__ = [
    "KINDS", "BLOCKS", "WIDTH_RATIOS", "ResNet", "ResNetSpace", "BasicBlock", "Bottleneck",
    "resnet_spec", "resnet_arch", "width_choices", "depth_choices", "random_resnet_spec", "convs_per_block",
]

KINDS = ("cifar", "imagenet")
BLOCKS = ("basic", "bottleneck")
# TAS's width ratios: each conv of C channels may keep int(C * r) of them, r in {0.3, 0.4, ..., 1.0}
WIDTH_RATIOS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
EXPANSION = 4  # a bottleneck's output width is 4x its inner width in the full network

_IMAGENET_DEPTHS = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]), 50: ("bottleneck", [3, 4, 6, 3]),
                    101: ("bottleneck", [3, 4, 23, 3]), 152: ("bottleneck", [3, 8, 36, 3])}


def convs_per_block(block: str) -> int:
    return 2 if block == "basic" else 3


def width_choices(c: int, ratios: Sequence[float] = WIDTH_RATIOS) -> list[int]:
    """TAS's candidate widths of a C-channel conv: sorted unique max(1, int(C*r))."""
    return sorted({max(1, int(c * r)) for r in ratios})


def depth_choices(n: int) -> list[int]:
    """TAS's candidate depths of an n-block stage: 1..n for n <= 3, else 1, 3, 5, ... plus n (n=18: 1, ..., 17, 18)."""
    if n <= 3:
        return list(range(1, n + 1))
    return sorted(set(range(1, n + 1, 2)) | {n})


# ---------------------------------------------------------------------------------------------------
# specs
# ---------------------------------------------------------------------------------------------------
def resnet_spec(depth: int, kind: str = "cifar", block: str | None = None) -> dict[str, Any]:
    """The spec of the full (unpruned) ResNet-`depth`.

    CIFAR: 6n+2 layers of basic blocks (20, 32, 44, 56, 110, ...) or, for depth >= 164 or
    block="bottleneck", 9n+2 layers of bottlenecks (164, 1001); stage widths 16/32/64 (x4 out for
    bottlenecks). ImageNet: torchvision's ResNet-18/34/50/101/152.
    """
    if kind not in KINDS:
        raise ArchFileError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "imagenet":
        if depth not in _IMAGENET_DEPTHS:
            raise ArchFileError(f"no ImageNet ResNet-{depth}: choose one of {sorted(_IMAGENET_DEPTHS)}")
        blk, depths = _IMAGENET_DEPTHS[depth]
        if block not in (None, blk):
            raise ArchFileError(f"ImageNet ResNet-{depth} uses {blk} blocks, not {block!r}")
        stem, base = 64, 64
    else:
        blk = block or ("bottleneck" if depth >= 164 else "basic")
        if blk not in BLOCKS:
            raise ArchFileError(f"block must be one of {', '.join(BLOCKS)}, got {block!r}")
        per = 3 * convs_per_block(blk)
        if not isinstance(depth, int) or depth < per + 2 or (depth - 2) % per:
            rule = "6n+2 (20, 32, 56, 110)" if blk == "basic" else "9n+2 (164)"
            raise ArchFileError(f"a CIFAR ResNet with {blk} blocks has {rule} layers, got {depth!r}")
        depths = [(depth - 2) // per] * 3
        stem, base = 16, 16
    widths = []
    for s, n in enumerate(depths):
        inner = base * 2**s
        w = [inner, inner] if blk == "basic" else [inner, inner, inner * EXPANSION]
        widths.append([list(w) for _ in range(n)])
    return {"kind": kind, "block": blk, "stem": stem, "depths": list(depths), "widths": widths}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise ArchFileError(f"spec must be an object like {{'kind': 'cifar', 'block': 'basic', 'stem': 16, "
                            f"'depths': [3, 3, 3], 'widths': [...]}} (see resnet_spec(20)), got {type(spec).__name__}")
    keys = {"kind", "block", "stem", "depths", "widths", "shortcuts"}
    unknown = set(spec) - keys
    if unknown:
        raise ArchFileError(f"spec has unknown field(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(keys))}")
    for k in ("kind", "block", "stem", "depths", "widths"):
        if k not in spec:
            raise ArchFileError(f"spec.{k} is missing (a full spec: nas_common.spaces.resnet.resnet_spec(56))")
    kind, block = spec["kind"], spec["block"]
    if kind not in KINDS:
        raise ArchFileError(f"spec.kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    if block not in BLOCKS:
        raise ArchFileError(f"spec.block must be one of {', '.join(map(repr, BLOCKS))}, got {block!r}")
    stem = spec["stem"]
    if not _is_int(stem) or stem < 1:
        raise ArchFileError(f"spec.stem must be a positive integer (the stem conv's width), got {stem!r}")
    depths = spec["depths"]
    if not isinstance(depths, list) or not depths:
        raise ArchFileError(f"spec.depths must be a non-empty list of blocks per stage, e.g. [9, 9, 9], got {depths!r}")
    for s, d in enumerate(depths):
        if not _is_int(d) or d < 1:
            raise ArchFileError(f"spec.depths[{s}] must be an integer >= 1 (blocks in stage {s + 1}), got {d!r}")
    widths = spec["widths"]
    if not isinstance(widths, list) or len(widths) != len(depths):
        raise ArchFileError(f"spec.widths must be a list with one entry per stage ({len(depths)}, as spec.depths), "
                            f"got {widths if not isinstance(widths, list) else f'{len(widths)} entries'}")
    nconv = convs_per_block(block)
    out_widths = []
    for s, (d, stage) in enumerate(zip(depths, widths, strict=False)):
        if not isinstance(stage, list) or len(stage) < d:
            n = len(stage) if isinstance(stage, list) else stage
            raise ArchFileError(f"spec.widths[{s}] must list at least spec.depths[{s}] = {d} blocks, got {n!r}")
        stage_out = []
        for b in range(d):
            w = stage[b]
            if not isinstance(w, list) or len(w) != nconv:
                raise ArchFileError(f"spec.widths[{s}][{b}] must list the {nconv} conv widths of a {block} block, "
                                    f"got {w!r}")
            for i, c in enumerate(w):
                if not _is_int(c) or c < 1:
                    raise ArchFileError(f"spec.widths[{s}][{b}][{i}] must be a positive integer, got {c!r}")
            stage_out.append(list(w))
        out_widths.append(stage_out)
    out = {"kind": kind, "block": block, "stem": stem, "depths": list(depths), "widths": out_widths}
    shortcuts = spec.get("shortcuts")
    if shortcuts is not None:
        if not isinstance(shortcuts, list) or len(shortcuts) != len(depths):
            raise ArchFileError(f"spec.shortcuts must be a list with one list of booleans per stage "
                                f"({len(depths)}), got {shortcuts!r}")
        norm = []
        for s, (d, stage) in enumerate(zip(depths, shortcuts, strict=False)):
            if not isinstance(stage, list) or len(stage) < d:
                raise ArchFileError(f"spec.shortcuts[{s}] must list at least {d} booleans, got {stage!r}")
            for b in range(d):
                if not isinstance(stage[b], bool):
                    raise ArchFileError(f"spec.shortcuts[{s}][{b}] must be true or false, got {stage[b]!r}")
            norm.append(list(stage[:d]))
        if not all(all(st) for st in norm):  # all-true is the default: omit it (one canonical form)
            out["shortcuts"] = norm
    return out


def random_resnet_spec(rng: random.Random, base: dict[str, Any], ratios: Sequence[float] = WIDTH_RATIOS
                       ) -> dict[str, Any]:
    """A random pruning of `base`: each conv width uniform over int(C*r), each depth uniform over 1..n."""
    base = _validate(base)
    widths = [[[rng.choice(width_choices(c, ratios)) for c in blk] for blk in stage] for stage in base["widths"]]
    depths = [rng.randint(1, d) for d in base["depths"]]
    spec = {"kind": base["kind"], "block": base["block"], "stem": rng.choice(width_choices(base["stem"], ratios)),
            "depths": depths, "widths": [w[:d] for w, d in zip(widths, depths, strict=False)]}
    if "shortcuts" in base:
        spec["shortcuts"] = [sc[:d] for sc, d in zip(base["shortcuts"], depths, strict=False)]
    return _validate(spec)


# ---------------------------------------------------------------------------------------------------
# closed-form costs: every conv of a spec with its shape (what TAS's expected-FLOP table sums)
# ---------------------------------------------------------------------------------------------------
def _out(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def resnet_conv_shapes(spec: dict[str, Any], input: Sequence[int] = (3, 32, 32), num_classes: int = 10
                       ) -> list[ConvShape]:
    """Every conv of the resnet `spec` on an `input` (C, H, W), in forward order, then the classifier.

    Summing `.macs` gives exactly `count_macs` of the built network; summing `.params` gives
    `count_params` (BN included).
    """
    spec = _validate(spec)
    c0, h, w = (int(v) for v in input)
    recs: list[ConvShape] = []

    def add(name: str, c_in: int, c_out: int, k: int, stride: int, pad: int, h_in: int, w_in: int, in_from: int,
            out_from: int | None = None, stage: int = -1, block: int = -1) -> ConvShape:
        idx = len(recs)
        r = ConvShape(idx, name, "conv", c_in, c_out, k, stride, _out(h_in, k, stride, pad), _out(w_in, k, stride, pad),
                      in_from, idx if out_from is None else out_from, stage, block)
        recs.append(r)
        return r

    imagenet = spec["kind"] == "imagenet"
    stem = add("conv1", c0, spec["stem"], 7 if imagenet else 3, 2 if imagenet else 1, 3 if imagenet else 1, h, w, -1)
    h, w = stem.h_out, stem.w_out
    if imagenet:  # 3x3/2 max-pool, padding 1
        h, w = _out(h, 3, 2, 1), _out(w, 3, 2, 1)
    cur, cur_c = stem.index, stem.c_out
    bottleneck = spec["block"] == "bottleneck"
    shortcuts = spec.get("shortcuts") or [[True] * d for d in spec["depths"]]
    for s, (d, stage) in enumerate(zip(spec["depths"], spec["widths"], strict=False)):
        for b in range(d):
            stride = 2 if (s > 0 and b == 0) else 1
            ws = stage[b]
            p = f"layer{s + 1}.{b}"
            if bottleneck:
                r1 = add(f"{p}.conv1", cur_c, ws[0], 1, 1, 0, h, w, cur, stage=s, block=b)
                r2 = add(f"{p}.conv2", ws[0], ws[1], 3, stride, 1, r1.h_out, r1.w_out, r1.index, stage=s, block=b)
                last = add(f"{p}.conv3", ws[1], ws[2], 1, 1, 0, r2.h_out, r2.w_out, r2.index, stage=s, block=b)
            else:
                r1 = add(f"{p}.conv1", cur_c, ws[0], 3, stride, 1, h, w, cur, stage=s, block=b)
                last = add(f"{p}.conv2", ws[0], ws[1], 3, 1, 1, r1.h_out, r1.w_out, r1.index, stage=s, block=b)
            if shortcuts[s][b] and (stride != 1 or cur_c != ws[-1]):
                add(f"{p}.downsample.0", cur_c, ws[-1], 1, stride, 0, h, w, cur, out_from=last.index, stage=s, block=b)
            h, w, cur, cur_c = last.h_out, last.w_out, last.index, last.c_out
    recs.append(ConvShape(len(recs), "fc", "linear", cur_c, num_classes, 1, 1, 1, 1, cur, -1))
    return recs




# ---------------------------------------------------------------------------------------------------
# modules
# ---------------------------------------------------------------------------------------------------
def _projection(c_in: int, c_out: int, stride: int, shortcut: bool) -> nn.Module | None:
    """The 1x1 conv + BN shortcut when a block changes width or resolution (option B), else None."""
    if shortcut and (stride != 1 or c_in != c_out):
        return nn.Sequential(PointwiseConv2d(c_in, c_out, stride), nn.BatchNorm2d(c_out))
    return None


class BasicBlock(nn.Module):
    """3x3 conv(stride)-BN-ReLU-3x3 conv-BN, plus the shortcut, then ReLU (torchvision's names)."""

    def __init__(self, c_in: int, widths: Sequence[int], stride: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        w1, w2 = widths
        self.conv1 = nn.Conv2d(c_in, w1, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(w1, w2, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(w2)
        self.downsample = _projection(c_in, w2, stride, shortcut)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1-BN-ReLU, 3x3(stride)-BN-ReLU, 1x1-BN, plus the shortcut, then ReLU (torchvision v1.5 layout)."""

    def __init__(self, c_in: int, widths: Sequence[int], stride: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.conv1 = nn.Conv2d(c_in, w1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.conv2 = nn.Conv2d(w1, w2, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(w2)
        self.conv3 = nn.Conv2d(w2, w3, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(w3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(c_in, w3, stride, shortcut)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class ResNet(nn.Module):
    """The network of a (validated) resnet spec: stem, stages `layer1..layerS`, global pool, `fc`."""

    def __init__(self, spec: dict[str, Any], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        spec = _validate(spec)
        self.spec = spec
        imagenet = spec["kind"] == "imagenet"
        stem = spec["stem"]
        if imagenet:
            self.conv1 = nn.Conv2d(in_channels, stem, 7, 2, 3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if imagenet else nn.Identity()
        block_cls = BasicBlock if spec["block"] == "basic" else Bottleneck
        shortcuts = spec.get("shortcuts") or [[True] * d for d in spec["depths"]]
        c = stem
        for s, (d, stage) in enumerate(zip(spec["depths"], spec["widths"], strict=False)):
            blocks = []
            for b in range(d):
                stride = 2 if (s > 0 and b == 0) else 1
                blocks.append(block_cls(c, stage[b], stride, shortcuts[s][b]))
                c = stage[b][-1]
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        self.num_stages = len(spec["depths"])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for s in range(self.num_stages):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---------------------------------------------------------------------------------------------------
# the space
# ---------------------------------------------------------------------------------------------------
class ResNetSpace(Space):
    """CIFAR/ImageNet ResNets with a width per conv and a depth per stage; see the module docstring."""

    name = "resnet"
    default_net = {"num_classes": 10, "input": [3, 32, 32]}

    def validate_spec(self, spec: Any) -> dict[str, Any]:
        return _validate(spec)

    def build(self, spec: dict[str, Any], net: dict[str, Any]) -> nn.Module:
        net = self.validate_net(net)
        return ResNet(spec, num_classes=net["num_classes"], in_channels=net["input"][0])

    def random_spec(self, rng: random.Random, net: dict[str, Any], base: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
        """A random pruning of `base` (default: ResNet-56 for inputs up to 64 px, else ImageNet ResNet-18)."""
        if base is None:
            net = self.validate_net(net)
            base = resnet_spec(56) if max(net["input"][1:]) <= 64 else resnet_spec(18, "imagenet")
        return random_resnet_spec(rng, base)

    def scaled(self, spec: dict[str, Any], net: dict[str, Any], k: float) -> tuple[dict[str, Any], dict[str, Any]]:
        spec = _validate(spec)
        out = {**spec, "stem": max(1, round(spec["stem"] * k)),
               "widths": [[[max(1, round(c * k)) for c in blk] for blk in stage] for stage in spec["widths"]]}
        return _validate(out), dict(net)

    def reference(self, net: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
        net = self.validate_net(net)
        cifar = max(net["input"][1:]) <= 64
        return ("resnet56", resnet_spec(56), net) if cifar else ("resnet18", resnet_spec(18, "imagenet"), net)

    def costs(self, spec: dict[str, Any], net: dict[str, Any]) -> dict[str, float]:
        net = self.validate_net(net)
        shapes = resnet_conv_shapes(spec, net["input"], net["num_classes"])
        return {"macs": float(shapes_macs(shapes)), "params": float(shapes_params(shapes))}

    def describe(self, spec: dict[str, Any]) -> str:
        spec = _validate(spec)
        layers = 2 + sum(spec["depths"]) * convs_per_block(spec["block"])
        outs = [stage[-1][-1] for stage in spec["widths"]]
        convs = sum(sum(w) for stage in spec["widths"] for w in stage)
        text = (f"{spec['kind']} ResNet-{layers} ({spec['block']}): depths {'-'.join(map(str, spec['depths']))}, "
                f"stem {spec['stem']}, stage outputs {'/'.join(map(str, outs))}, {convs} conv channels")
        if "shortcuts" in spec:
            text += f", {sum(not v for st in spec['shortcuts'] for v in st)} blocks without shortcut"
        return text


SPACES.register("resnet", ResNetSpace())


def resnet_arch(depth: int, kind: str = "cifar", num_classes: int | None = None,
                input_shape: Sequence[int] | None = None) -> Arch:
    """The Arch of the full ResNet-`depth` (CIFAR-10 or ImageNet-1k defaults)."""
    if num_classes is None:
        num_classes = 1000 if kind == "imagenet" else 10
    if input_shape is None:
        input_shape = (3, 224, 224) if kind == "imagenet" else (3, 32, 32)
    return Arch("resnet", resnet_spec(depth, kind), {"num_classes": num_classes, "input": list(input_shape)})


for _d in (20, 32, 56, 110, 164):
    register_arch(f"resnet{_d}", lambda d=_d: resnet_arch(d, "cifar"))
for _d in (18, 50):
    register_arch(f"resnet{_d}", lambda d=_d: resnet_arch(d, "imagenet"))
