"""`macs-ptflops`: multiply-adds as the published ImageNet tables of the DARTS space count them.

nas_common's `macs` counts the multiply-accumulates of convolutions and linear layers only. The
"FLOPs"/"multiply-adds" columns of the ImageNet (mobile setting) tables that ISTA-NAS compares with were
counted with more: the convention of the ptflops tool (sovrasov/flops-counter.pytorch), which adds, per
forward of one image,

  * convolutions and linear layers: their multiply-accumulates, plus one per output element with a bias;
  * BatchNorm: one per input element, two when it is affine;
  * ReLU: one per output element;
  * pooling (max, average, adaptive): one per input element.

Evidence (asserted in the tests): PC-DARTS' ImageNet cell, whose repository's ImageNet training script
ISTA-NAS' official `tools/evaluation_imagenet.py` is, counts 597.2M this way against the 597M of the
PC-DARTS README table (582M plain MACs); DARTS-V2 counts 544.6M, the figure a ptflops user reported for
it (quark0/darts#46). DARTS' own 574M (reported in the same tables) follows neither convention (530M plain
MACs): its authors never said how they counted (the question in that issue is unanswered).

Registered as the cost `macs-ptflops` (`nas_common.registry.COSTS`) next to `macs`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nas_common.costs import CostInfo, count_macs, register_cost
from nas_common.registry import COSTS

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6)


def _elementwise_ops(model: nn.Module, input_shape: Sequence[int], device: torch.device) -> int:
    """What the ptflops convention adds to the MACs: biases, BN, ReLU and pooling elements (one image)."""
    total = 0

    def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            total += inputs[0].numel() * (2 if mod.affine else 1)
        elif isinstance(mod, _ACTIVATIONS):
            total += output.numel()
        elif isinstance(mod, _POOLS):
            total += inputs[0].numel()
        elif isinstance(mod, (nn.Conv2d, nn.Linear)) and mod.bias is not None:
            total += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


def count_macs_ptflops(model: nn.Module, input_shape: Sequence[int], device: torch.device | str = "cpu") -> int:
    """Multiply-adds of one forward pass (batch 1, eval mode: no auxiliary head) in the ptflops
    convention: `count_macs` plus one per bias, BN (two if affine), ReLU and pooled element."""
    device = torch.device(device)
    shape = tuple(int(s) for s in input_shape)
    return int(count_macs(model, shape, device=device)) + _elementwise_ops(model, shape, device)


if not COSTS.registered("macs-ptflops"):  # importing twice (reload) must not register twice
    register_cost(CostInfo(
        "macs-ptflops", "multiply-adds", "MACs plus BN, ReLU, pooling and bias elements (ptflops, as the "
        "DARTS-family ImageNet tables count)",
        lambda model, shape, arg, device: float(count_macs_ptflops(model, shape, device))))

__all__ = ["count_macs_ptflops"]
