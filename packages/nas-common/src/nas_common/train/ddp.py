"""Data-parallel helpers for the Trainer, all no-ops in a single process.

Under `torchrun --nproc-per-node N` every rank runs the same command: `nas_common.dist.init_from_env`
joins the process group (gloo on CPU, nccl on CUDA), the training loader shards each global batch by
rank, DDP averages the gradients, and rank 0 logs and writes. BatchNorm running statistics stay per
rank during an epoch (as in plain DDP); `sync_buffers` copies rank 0's before evaluation and saving, so
every rank holds the same model.
"""
from __future__ import annotations

import hashlib

import torch
import torch.distributed as torch_dist
from torch import nn

from .. import dist


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel when several ranks run, else `model` itself."""
    if dist.world_size() <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over ranks (in place; `t` itself in one process)."""
    if dist.is_initialized() and dist.world_size() > 1:
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.world_size() > 1:
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return t


def sync_buffers(model: nn.Module, src: int = 0) -> None:
    """Give every rank rank `src`'s buffers (BatchNorm running statistics)."""
    if not (dist.is_initialized() and dist.world_size() > 1):
        return
    for b in unwrap(model).buffers():
        torch_dist.broadcast(b, src=src)


def weight_digest(model: nn.Module) -> str:
    """A hash of every parameter and buffer (bit-exact): equal digests, equal models."""
    h = hashlib.sha256()
    for name, t in unwrap(model).state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()[:16]


def gather_objects(obj: object) -> list[object]:
    """Every rank's `obj`, in rank order (`[obj]` in one process)."""
    if not (dist.is_initialized() and dist.world_size() > 1):
        return [obj]
    out: list[object] = [None] * dist.world_size()
    torch_dist.all_gather_object(out, obj)
    return out
