"""Data-parallel runs under torchrun, and the helpers that make one code path serve one process too.

Under `torchrun --nproc-per-node N` every rank runs the same command. Rank 0 logs and writes; every
collective here is a no-op without a process group, so a single process runs the same code.

- Process group: `init_from_env` (gloo on the CPU, nccl on CUDA), `rank`, `world_size`, `barrier`.
- Rank zero: `rank_zero_only` (a decorator), `rank_zero_warn`, `rank_zero_info`.
- Collectives: `all_reduce_` (in place, sum or mean), `broadcast_` (a tensor in place),
  `broadcast_object` and `gather_objects` (per-epoch decisions and digests, not per step).
- DDP: `wrap`, `unwrap`, `sync_buffers`, `weight_digest` (equal digests, bit-equal models).
The search context built on these (`task.context`: DDP-wrapped supernet, sharded loaders, rank-0
decisions) is `nas_common.context.SearchContext`.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as torch_dist
from torch import nn

T = TypeVar("T")
log = logging.getLogger("nas_common")


# ---- the process group -------------------------------------------------------------------------
def is_initialized() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def rank() -> int:
    return torch_dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return torch_dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device: torch.device | str | None = None) -> bool:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); False when not launched so."""
    if not launched_by_torchrun() or is_initialized():
        return is_initialized()
    dev = torch.device(device) if device is not None else None
    backend = "nccl" if dev is not None and dev.type == "cuda" else "gloo"
    if dev is not None and dev.type == "cuda":
        torch.cuda.set_device(local_rank())
    torch_dist.init_process_group(backend=backend)
    return True


def barrier() -> None:
    if is_initialized():
        torch_dist.barrier()


def cleanup() -> None:
    if is_initialized():
        torch_dist.destroy_process_group()


# ---- rank zero ---------------------------------------------------------------------------------
def rank_zero_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Run `fn` on rank 0 only (other ranks get None)."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> T | None:
        return fn(*args, **kwargs) if is_main() else None

    return wrapped


@rank_zero_only
def rank_zero_warn(message: str, category: type[Warning] = UserWarning, stacklevel: int = 2) -> None:
    """One warning, from rank 0 only."""
    warnings.warn(message, category, stacklevel=stacklevel + 1)


@rank_zero_only
def rank_zero_info(message: str, *args: Any) -> None:
    """An INFO record of the `nas_common` logger, from rank 0 only."""
    log.info(message, *args)


# ---- collectives (no-ops in one process) ---------------------------------------------------------
def _several() -> bool:
    return is_initialized() and world_size() > 1


def all_reduce_(t: torch.Tensor, op: Literal["sum", "mean", "max"] = "sum") -> torch.Tensor:
    """`t` reduced over ranks, in place (`t` itself in one process)."""
    if _several():
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX if op == "max" else torch_dist.ReduceOp.SUM)
        if op == "mean":
            t.div_(world_size())
    return t


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank `src`'s values of `t` on every rank, in place."""
    if _several():
        torch_dist.broadcast(t, src=src)
    return t


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank `src`'s value of a picklable object on every rank (host round trip: not inside a step)."""
    if not _several():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: object) -> list[object]:
    """Every rank's `obj`, in rank order (`[obj]` in one process)."""
    if not _several():
        return [obj]
    out: list[object] = [None] * world_size()
    torch_dist.all_gather_object(out, obj)
    return out


# ---- DDP -----------------------------------------------------------------------------------------
def wrap(model: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """`model` in DistributedDataParallel when several ranks run, else `model` itself."""
    if not _several():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def sync_buffers(model: nn.Module, src: int = 0) -> None:
    """Give every rank rank `src`'s buffers (BatchNorm running statistics)."""
    if _several():
        for b in unwrap(model).buffers():
            torch_dist.broadcast(b, src=src)


def tensor_digest(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A hash of named tensors, bit-exact: equal digests, equal values."""
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(name.encode())
        t = t.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def weight_digest(model: nn.Module) -> str:
    """A hash of every parameter and buffer (bit-exact): equal digests, equal models."""
    return tensor_digest(unwrap(model).state_dict().items())


__all__ = [
    "all_reduce_", "barrier", "broadcast_", "broadcast_object", "cleanup",
    "gather_objects", "init_from_env", "is_initialized", "is_main", "launched_by_torchrun", "local_rank",
    "rank", "rank_zero_info", "rank_zero_only", "rank_zero_warn", "sync_buffers", "tensor_digest", "unwrap",
    "weight_digest", "world_size", "wrap",
]
