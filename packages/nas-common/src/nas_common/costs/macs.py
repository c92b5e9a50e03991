"""MACs through torch.utils.flop_counter: one multiply-accumulate = 2 FLOPs as torch counts them.

Papers (ResNet, DARTS, TAS) say "FLOPs" for multiply-accumulates of convolutions and linear layers;
that is what this counts (BN, ReLU, pooling and additions are not counted, as in those papers).
"""
from __future__ import annotations


import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...], device: torch.device | str = "cpu") -> int:
    """Multiply-accumulates of one forward pass of `model` on a single input of `input_shape` (C, H, W)."""
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, *input_shape, device=device)
        with FlopCounterMode(display=False) as counter:
            model(x)
        return int(counter.get_total_flops()) // 2
    finally:
        model.train(was_training)
