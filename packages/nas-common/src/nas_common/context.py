"""The search context: how a search runs on one or several processes, the same code for both.

`task.context` gives it: its weight-sharing network wrapped in DDP (`find_unused_parameters`, since
sampled paths leave parameters unused), loaders sharded by rank, gradients of architecture parameters
averaged, discrete decisions taken on rank 0 and broadcast. `ctx.step()` marks one search step: the
conformance suite observes it to check that no host-device sync happens inside a step, and the GPU
benchmark times it. Built on `nas_common.dist`, whose collectives are no-ops in one process.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from .data import make_loader
from .dist import (
    all_reduce_,
    broadcast_,
    broadcast_object,
    init_from_env,
    is_main,
    local_rank,
    rank,
    sync_buffers,
    unwrap,
    world_size,
    wrap,
)
from .errors import ConfigError, NASError

T = TypeVar("T")


class _StepObservers:
    """Context managers entered around every `SearchContext.step()` (the conformance suite's sync
    detector, the GPU benchmark's timers). Empty in normal runs, so a step costs one list check."""

    def __init__(self) -> None:
        self.active: list[Callable[[], contextlib.AbstractContextManager[Any]]] = []

    @contextlib.contextmanager
    def observe(self, factory: Callable[[], contextlib.AbstractContextManager[Any]]) -> Iterator[None]:
        self.active.append(factory)
        try:
            yield
        finally:
            self.active.remove(factory)


STEP_OBSERVERS = _StepObservers()


class SearchContext:
    """How a search runs on one or several processes (`task.context`); every method uses it.

        ctx = task.context
        net = ctx.wrap(supernet)                        # DDP under torchrun, the module itself otherwise
        loader = ctx.loader(split, ctx.per_rank_batch(64), train=True, seed=task.seed)  # its shard
        for x, y in loader:
            with ctx.step():                            # one search step: no host sync in here
                ...; loss.backward()                    # DDP averages the weights' gradients
                ctx.all_reduce_grads(arch_params)       # architecture parameters outside the DDP module
        support = ctx.decide(solve_lasso, b)            # rank 0 decides, every rank gets its answer

    Weight-sharing forwards that are not followed by a backward through the DDP module (scoring,
    an architecture step through `torch.autograd.grad`) should call `ctx.unwrap(net)` instead, so that
    DDP does not wait for gradients that never come. Randomness is per rank (seeds are offset by rank
    in `seed_everything`): samples that must agree across ranks are drawn on rank 0 and broadcast
    (`broadcast_`), or drawn from a generator seeded identically on every rank.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        device = torch.device(device)
        init_from_env(device)
        if device.type == "cuda" and device.index is None and (world_size() > 1):
            device = torch.device("cuda", local_rank() % torch.cuda.device_count())
        self.device = device

    # -- who am I ----------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return rank()

    @property
    def world_size(self) -> int:
        return world_size()

    @property
    def is_main(self) -> bool:
        return is_main()

    @property
    def distributed(self) -> bool:
        return (world_size() > 1)

    # -- the network and the data --------------------------------------------------------------------
    def wrap(self, module: nn.Module, find_unused_parameters: bool = True) -> nn.Module:
        """`module` in DDP when several ranks run (its initial weights are rank 0's), else itself."""
        return wrap(module, self.device, find_unused_parameters=find_unused_parameters)

    @staticmethod
    def unwrap(module: nn.Module) -> nn.Module:
        return unwrap(module)

    def per_rank_batch(self, batch_size: int, key: str = "batch_size") -> int:
        """This rank's share of a global batch. A method's `batch_size` is the global batch, as the
        Trainer's is: a search reads the same images per step whatever the number of processes, so the
        paper's batch means the same under torchrun. A batch the ranks cannot share equally is refused
        (ConfigError naming `key`, the config field to change); call it from `check()` to refuse early."""
        n = self.world_size
        if batch_size < 1 or batch_size % n:
            fit = max(batch_size // n, 1) * n
            raise ConfigError(f"{key}={batch_size} does not split over the {n} ranks of this run: it is the global "
                              f"batch (each rank reads {key}/{n}); use a positive multiple of {n} "
                              f"(e.g. -o {key}={fit})")
        return batch_size // n

    def loader(self, split: Any, batch_size: int, **kwargs: Any) -> Any:
        """`make_loader` on this device, sharded by rank when several run. `batch_size` is what each rank
        reads: pass `per_rank_batch(config.batch_size)`."""
        kwargs.setdefault("distributed", self.distributed)
        return make_loader(split, batch_size, device=self.device, **kwargs)

    # -- collectives -------------------------------------------------------------------------------
    def all_reduce_grads(self, params: Iterable[torch.Tensor]) -> None:
        """Average the `.grad` of `params` over ranks (one flat buffer, one collective)."""
        if not self.distributed:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        all_reduce_(flat, "mean")
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def all_reduce_(self, t: torch.Tensor, op: Literal["sum", "mean", "max"] = "sum") -> torch.Tensor:
        return all_reduce_(t, op)

    def broadcast_(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        return broadcast_(t, src)

    def broadcast_params_(self, params: Iterable[torch.Tensor]) -> None:
        """Give every rank rank 0's values of `params` (architecture parameters outside DDP, at start)."""
        if self.distributed:
            with torch.no_grad():
                for p in params:
                    broadcast_(p.data)

    def decide(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args)` computed on rank 0 and given to every rank (a discrete decision: a LASSO support,
        a derived architecture, a sampled set of candidates). Tensors come back on this device. A
        NASError `fn` raises on rank 0 (an infeasible budget found mid-search) is raised on every rank:
        the others would otherwise wait for rank 0's answer forever."""
        if not self.distributed:
            return fn(*args, **kwargs)
        value: Any = None
        if self.is_main:
            try:
                value = fn(*args, **kwargs)
            except NASError as e:
                value = _Raised(type(e), str(e))
        value = broadcast_object(_to_cpu(value))
        if isinstance(value, _Raised):
            raise value.error(value.message)
        return _to_device(value, self.device)

    def sync_buffers(self, module: nn.Module) -> None:
        sync_buffers(module)

    # -- steps ---------------------------------------------------------------------------------------
    def step(self) -> contextlib.AbstractContextManager[Any]:
        """Marks one search step (weights and/or architecture update on one batch)."""
        if not STEP_OBSERVERS.active:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for factory in list(STEP_OBSERVERS.active):
            stack.enter_context(factory())
        return stack


@dataclass(frozen=True)
class _Raised:
    """What `decide` sends the other ranks in place of a value when rank 0's decision raised."""

    error: type[NASError]
    message: str


def _to_cpu(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu()
    if isinstance(v, (list, tuple)):
        return type(v)(_to_cpu(x) for x in v)
    if isinstance(v, dict):
        return {k: _to_cpu(x) for k, x in v.items()}
    return v


def _to_device(v: Any, device: torch.device) -> Any:
    if isinstance(v, torch.Tensor):
        return v.to(device)
    if isinstance(v, (list, tuple)):
        return type(v)(_to_device(x, device) for x in v)
    if isinstance(v, dict):
        return {k: _to_device(x, device) for k, x in v.items()}
    return v


__all__ = ["STEP_OBSERVERS", "SearchContext"]
