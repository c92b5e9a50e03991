"""The searched configurations released with TAS, as built-in architectures of the "resnet" space.

Transcribed from the official repository (D-X-Y/AutoDL-Projects @f46486e, `configs/NeurIPS-2019/*.config`:
`xchannels`, `xblocks`, `estimated_FLOP`); configurations are published facts. Importing this module
registers them (`get_arch("tas-cifar10-resnet56")`, `nas cost tas-cifar10-resnet56`, `nas train ...`):

    tas-cifar10-resnet56     CIFAR-10 ResNet-56, depths 5-5-5        published 57.93 MFLOPs
    tas-cifar10-resnet110    CIFAR-10 ResNet-110, depths 11-11-9     published 117.50
    tas-cifar10-resnet164    CIFAR-10 ResNet-164, depths 13-15-13    published 173.02
    tas-cifar100-resnet32    CIFAR-100 ResNet-32, depths 5-5-5       published 42.47
    tas-imagenet-resnet18    ImageNet ResNet-18, depths 1-1-2-2      published 1120.44
    tas-imagenet-resnet50    ImageNet ResNet-50, depths 3-4-5-3      published 2291.32

How a release reads: `xchannels` is the input's channels, then the stem's width, then the width of every
conv of every block of the *unpruned* network in order (blocks past a stage's depth included);
`xblocks` is the number of blocks kept per stage. The pruned network keeps the first `xblocks[s]`
blocks of stage s, and a stage's first block reads the last kept block's output. That network (the
one the official code retrains) is what the spec here builds, with a 1x1 projection shortcut wherever
a block changes width or resolution, as the official inference networks have.

Its counted MACs are not always the published figure: the published `estimated_FLOP` is the search
network's estimate of its argmax configuration (`official_estimate_mflops`), which takes a stage's
first conv's input width from the flat `xchannels` list, i.e. from the last block of the previous
stage in the unpruned network even when that block was dropped. Where no block was dropped (CIFAR-100
ResNet-32) the two agree; elsewhere the network that is trained counts more (ResNet-56 59.86M,
ResNet-110 119.26M, ResNet-164 178.07M, ResNet-18 1210.76M, ResNet-50 2309.25M, by `nas cost`).
`official_estimate_mflops` reproduces the published figures exactly, except ResNet-50's (2281.57 vs
2291.32): that release cannot be the output of the released search code anyway, since its stage-3
depth 5 is not among the ImageNet depth choices (2, 4, 6) and several of its widths (45, 30, 1844, ...)
are not int(C*r) for r in 0.3 .. 1.0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nas_common import Arch, register_arch
from nas_common.spaces.resnet import convs_per_block

from .model import base_spec

__all__ = ["RELEASED", "Released", "official_estimate_mflops", "released_arch"]

SOURCE = "D-X-Y/AutoDL-Projects@f46486e configs/NeurIPS-2019"


@dataclass(frozen=True)
class Released:
    """One released searched configuration, as published."""

    file: str  # the config's file name in `SOURCE`
    base: str  # the unpruned network it was searched from
    num_classes: int
    input: tuple[int, int, int]
    xchannels: tuple[int, ...]
    xblocks: tuple[int, ...]
    published_mflops: float  # the config's `estimated_FLOP`

    def spec(self) -> dict[str, Any]:
        """The "resnet"-space spec of the pruned network (see the module docstring)."""
        full = base_spec(self.base)
        n = convs_per_block(full["block"])
        if self.xchannels[0] != self.input[0] or len(self.xchannels) != 2 + n * sum(full["depths"]):
            raise ValueError(f"{self.file}: xchannels does not fit {self.base}")
        it = iter(self.xchannels[2:])
        per_stage = [[[next(it) for _ in range(n)] for _ in range(d)] for d in full["depths"]]
        return {"kind": full["kind"], "block": full["block"], "stem": self.xchannels[1], "depths": list(self.xblocks),
                "widths": [stage[:d] for stage, d in zip(per_stage, self.xblocks, strict=True)]}


RELEASED: dict[str, Released] = {
    "tas-cifar10-resnet56": Released("C010-ResNet56.config", "resnet56", 10, (3, 32, 32), (
        3, 16, 16, 16, 14, 11, 9, 16, 12, 16, 6, 16, 4, 8, 4, 14, 6, 4, 4, 4, 32, 32, 32, 32, 32,
        32, 22, 28, 32, 32, 19, 9, 19, 16, 9, 25, 16, 9, 64, 64, 64, 64, 64, 64, 64, 64, 64, 51, 19,
        19, 32, 19, 19, 32, 19, 25), (5, 5, 5), 57.93305),
    "tas-cifar10-resnet110": Released("C010-ResNet110.config", "resnet110", 10, (3, 32, 32), (
        3, 16, 14, 16, 14, 16, 16, 16, 16, 16, 14, 16, 16, 16, 12, 16, 16, 16, 9, 16, 8, 16, 4, 16,
        4, 4, 4, 16, 4, 4, 4, 4, 6, 6, 4, 6, 11, 4, 32, 32, 32, 32, 32, 32, 32, 32, 28, 32, 32, 28,
        22, 22, 22, 32, 32, 25, 28, 9, 9, 28, 12, 9, 12, 32, 9, 9, 22, 12, 16, 9, 12, 9, 9, 9, 64,
        64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 38, 64, 25, 19, 19, 19, 19, 19, 25,
        32, 19, 19, 25, 25, 19, 19, 38, 38, 19, 19, 51), (11, 11, 9), 117.498238),
    "tas-cifar10-resnet164": Released("C010-ResNet164.config", "resnet164", 10, (3, 32, 32), (
        3, 16, 8, 16, 64, 6, 16, 64, 14, 16, 64, 8, 16, 64, 4, 16, 64, 6, 16, 64, 6, 16, 64, 11, 11,
        64, 4, 14, 64, 4, 4, 57, 4, 16, 64, 9, 12, 57, 4, 16, 64, 4, 8, 57, 6, 6, 51, 6, 4, 44, 6,
        4, 57, 6, 6, 19, 32, 32, 128, 32, 32, 128, 32, 32, 128, 9, 32, 128, 32, 32, 128, 25, 28,
        115, 12, 32, 128, 32, 32, 128, 32, 32, 128, 32, 32, 102, 28, 32, 128, 16, 32, 128, 28, 19,
        128, 32, 9, 51, 16, 12, 102, 12, 22, 115, 9, 12, 51, 12, 16, 38, 64, 64, 256, 64, 64, 256,
        64, 64, 256, 64, 64, 256, 64, 64, 256, 64, 64, 256, 64, 64, 256, 64, 64, 256, 64, 64, 256,
        64, 64, 256, 64, 57, 204, 64, 25, 179, 19, 25, 204, 44, 19, 153, 38, 25, 76, 19, 32, 128,
        19, 51, 76, 57, 32, 76), (13, 15, 13), 173.023672),
    "tas-cifar100-resnet32": Released("C100-ResNet32.config", "resnet32", 100, (3, 32, 32), (
        3, 16, 4, 4, 6, 11, 6, 4, 8, 4, 4, 4, 32, 32, 9, 28, 28, 28, 28, 28, 32, 32, 64, 64, 64, 64,
        64, 64, 64, 64, 64, 64), (5, 5, 5), 42.47),
    "tas-imagenet-resnet18": Released("ImageNet-ResNet18V1.config", "resnet18", 1000, (3, 224, 224), (
        3, 64, 25, 64, 38, 19, 128, 128, 38, 38, 256, 256, 256, 256, 512, 512, 512, 512), (1, 1, 2, 2), 1120.44032),
    "tas-imagenet-resnet50": Released("ImageNet-ResNet50V1.config", "resnet50", 1000, (3, 224, 224), (
        3, 45, 45, 30, 102, 33, 60, 154, 68, 70, 180, 38, 38, 307, 38, 38, 410, 64, 128, 358, 38,
        51, 256, 76, 76, 512, 76, 76, 512, 179, 256, 614, 100, 102, 307, 179, 230, 614, 204, 102,
        307, 153, 153, 1228, 512, 512, 1434, 512, 512, 1844), (3, 4, 5, 3), 2291.316289),
}


def released_arch(name: str) -> Arch:
    """The Arch of a released configuration (counted costs filled in on first build by `with_costs`)."""
    r = RELEASED[name]
    prov = {"source": f"{SOURCE}/{r.file}", "base": r.base, "published_mflops": r.published_mflops,
            "derived_from": "released"}
    return Arch("resnet", r.spec(), {"num_classes": r.num_classes, "input": list(r.input)}, method="tas",
                provenance=prov)


def official_estimate_mflops(r: Released, flat: bool = True) -> float:
    """The official search's FLOP estimate of a configuration, in MFLOPs (multiply-accumulates / 1e6).

    Written from the official code's description: over the unpruned network's blocks in order, each kept
    block costs its convs, k^2 * H_out * W_out * C_in * C_out, with C_in taken from the *flat* channel
    list (the previous entry of `xchannels`, whatever block it belongs to); plus its projection shortcut,
    C_in * C_out * H_out * W_out, where the unpruned block has one (stride 2, or input width != output
    width) or where C_in != C_out; plus the classifier, C_last * classes, C_last being the last entry.
    `flat=False` reads a stage's first input and the classifier's input from the last *kept* block
    instead: the MACs of the network that is built and trained.
    """
    full = base_spec(r.base)
    n = convs_per_block(full["block"])
    imagenet = full["kind"] == "imagenet"
    h = r.input[1]
    xc = r.xchannels
    if imagenet:
        total = 49 * xc[0] * xc[1] * (h // 2) ** 2
        h //= 4
    else:
        total = 9 * xc[0] * xc[1] * h * h
    kernels = (3, 3) if n == 2 else (1, 3, 1)
    pos = 1  # index in xc of the current block's input width
    c_full = full["stem"]
    last_kept = xc[1]
    for s, (d, kept) in enumerate(zip(full["depths"], r.xblocks, strict=True)):
        for b in range(d):
            ch = list(xc[pos: pos + n + 1])
            if not flat and b == 0:
                ch[0] = last_kept
            stride = 2 if (s > 0 and b == 0) else 1
            h_out = h // stride
            if b < kept:
                for i, k in enumerate(kernels):
                    # the stride sits on the first conv of a basic block and on the 3x3 of a bottleneck
                    area = h_out * h_out if (i > 0 or n == 2 or stride == 1) else h * h
                    total += k * k * ch[i] * ch[i + 1] * area
                has_proj = stride != 1 or c_full != full["widths"][s][b][-1]
                if has_proj or ch[0] != ch[-1]:
                    total += ch[0] * ch[-1] * h_out * h_out
                last_kept = ch[-1]
            c_full = full["widths"][s][b][-1]
            pos += n
            h = h_out
    return (total + (xc[-1] if flat else last_kept) * r.num_classes) / 1e6


def _factory(name: str):  # noqa: ANN202
    return lambda: released_arch(name)


for _name in RELEASED:
    register_arch(_name, _factory(_name))
