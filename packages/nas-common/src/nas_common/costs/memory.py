"""Memory of a network: weight bytes plus peak activation bytes of one forward pass.

How the activation part is obtained depends on the device (and the result says which):

* CUDA: measured. `torch.cuda.max_memory_allocated` during a forward pass (and backward, with
  `training=True`: then gradients count too) minus what was allocated before it (weights and the
  input), after resetting the peak statistics. This is the real peak, including the allocator's rounding and
  any workspace.
* CPU (and other devices): estimated. The bytes of every tensor output by a leaf module during a
  forward pass, summed (a forward hook on each leaf module). This is what a training step keeps for
  the backward pass (an upper bound of an inference peak, which frees activations as it goes);
  in-place ops (ReLU(inplace=True)) are counted like the others.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .macs import _one_thread

__all__ = ["measure_memory", "memory_breakdown", "weight_bytes"]


def weight_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (BN running statistics included)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def memory_breakdown(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1,
                     device: torch.device | str = "cpu", training: bool = False) -> dict[str, Any]:
    """{"weights", "activations", "total" (bytes), "method": "cuda-peak" | "hook-estimate"}.

    The model is moved to `device` and run in eval mode (train mode with `training=True`, then a
    backward pass on CUDA); its training flag is restored afterwards.
    """
    device = torch.device(device)
    model.to(device)
    was_training = model.training
    model.train(training)
    x = torch.zeros(batch_size, *input_shape, device=device)
    weights = weight_bytes(model)
    try:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            with torch.set_grad_enabled(training):
                out = model(x)
                if training:
                    sum(t.float().sum() for t in _tensors(out)).backward()
            torch.cuda.synchronize(device)
            activations = torch.cuda.max_memory_allocated(device) - before
            method = "cuda-peak"
            model.zero_grad(set_to_none=True)
        else:
            total = 0

            def hook(_m: nn.Module, _i: Any, out: Any) -> None:
                nonlocal total
                total += sum(t.numel() * t.element_size() for t in _tensors(out))

            leaves = [m for m in model.modules() if not list(m.children())]
            handles = [m.register_forward_hook(hook) for m in leaves]
            try:
                with torch.no_grad(), _one_thread(device):  # the count does not depend on threads
                    model(x)
            finally:
                for h in handles:
                    h.remove()
            activations = total
            method = "hook-estimate"
    finally:
        model.train(was_training)
    return {"weights": int(weights), "activations": int(activations), "total": int(weights + activations),
            "method": method, "batch_size": batch_size, "device": str(device)}


def measure_memory(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1,
                   device: torch.device | str = "cpu", training: bool = False) -> int:
    """Peak activation + weight bytes of a forward pass on `batch_size` inputs (see module docstring)."""
    return memory_breakdown(model, input_shape, batch_size, device, training)["total"]
