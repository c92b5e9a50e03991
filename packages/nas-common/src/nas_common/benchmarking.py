"""Helpers of the micro-benchmarks (each package's `benchmarks/`) and the harness report: wall clocks
that wait for the device, medians over repeats, Markdown tables. Installed with nas-common so that a
package's benchmarks run wherever that package is installed."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["markdown_table", "median_time", "median_times_interleaved", "plain_loop_images_per_s", "sync",
           "trainer_images_per_s", "warm_up"]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a wall clock measures finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def median_time(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds of fn() over `iters` runs after `warmup` untimed ones."""
    return median_times_interleaved([fn], device, warmup, iters)[0]


def median_times_interleaved(fns: list[Callable[[], object]], device: torch.device, warmup: int, iters: int
                             ) -> list[float]:
    """Median seconds of each fn, measured round-robin so that load changes on a shared machine hit all
    of them alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(iters):
        for k, fn in enumerate(fns):
            times[k].append(_timed(fn, device))
    return [statistics.median(t) for t in times]


def warm_up(loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], opt: torch.optim.Optimizer,
            batches: Any, steps: int = 2) -> None:
    """`steps` untimed forward/backward passes (kernels chosen, allocator warm), gradients cleared after."""
    for i, (x, y) in enumerate(batches):
        if i >= steps:
            break
        opt.zero_grad(set_to_none=True)
        loss_of(x, y).backward()
    opt.zero_grad(set_to_none=True)


def plain_loop_images_per_s(model: torch.nn.Module, split: Any, batch_size: int, epochs: int,
                            device: torch.device) -> float:
    """Training images/s of the textbook loop (forward, cross-entropy, zero_grad, backward, step; SGD 0.1
    Nesterov, weight decay 5e-4, the device loader's crop + flip): the reference the Trainer is measured
    against, here once so that every benchmark compares with the same loop."""
    from .data import make_loader

    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loader = make_loader(split, batch_size, train=True, device=device, seed=0)
    warm_up(lambda x, y: F.cross_entropy(model(x), y), opt, make_loader(split, batch_size, train=True,
                                                                      device=device, seed=1))
    n = 0
    sync(device)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += y.shape[0]
    sync(device)
    return n / (time.perf_counter() - t0)


def trainer_images_per_s(trainer: Any, split: Any, batch_size: int) -> float:
    """Training images/s of `trainer.fit(split)` (a nas_common Trainer), after the same warm-up as the
    plain loop's."""
    from .data import make_loader

    warm_up(lambda x, y: F.cross_entropy(trainer.net(x), y), trainer.optimizer,
            make_loader(split, batch_size, train=True, device=trainer.device, seed=1))
    sync(trainer.device)
    t0 = time.perf_counter()
    trainer.fit(split)
    sync(trainer.device)
    seconds = time.perf_counter() - t0
    return sum(h["train_images"] for h in trainer.history) / seconds


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 1e4 or (abs(v) < 1e-3 and v != 0):
            return f"{v:.3g}"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)
