"""Process-group helpers that are safe in a single process (no-ops without torch.distributed).

Under `torchrun` every rank runs the same command; rank 0 logs and writes, and discrete choices
(a sampled architecture, a frozen node) are decided on rank 0 and broadcast so ranks never diverge.
"""
from __future__ import annotations

import os
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist

T = TypeVar("T")


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


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank `src`'s value of `obj` on every rank (the identity in one process)."""
    if not is_initialized():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]


def decide_on_main(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run `fn` on rank 0 only and give its result to every rank (for discrete search decisions)."""
    value = fn(*args, **kwargs) if is_main() else None
    return broadcast_object(value)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if not is_initialized():
        return t
    t = t.clone()
    torch_dist.all_reduce(t)
    return t / world_size()


def cleanup() -> None:
    if is_initialized():
        torch_dist.destroy_process_group()
