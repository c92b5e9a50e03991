"""Posterior-guided sampling (Alg. 1, lines 7-16): draw hard masks, reject those over budget, score the
rest with the inherited weights on held-out data (no fine-tuning), keep the best.

Everything is vectorised: masks are (M, K) bool tensors over the supernet's flat channel layout,
costs come in closed form from the plan, and scoring (nas_common's one-shot scoring) folds several
masks into one batch.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from nas_common.methods import Budget
from nas_common.oneshot import score_candidates

from .supernets import Plan, SupNet


def channel_rates(net: SupNet) -> torch.Tensor:
    """Each channel's drop rate (its group's p), over the flat layout: (K,)."""
    p = net.drop_rates().detach()
    sizes = torch.tensor(net.plan.sizes, device=p.device)
    return torch.repeat_interleave(p, sizes, output_size=net.plan.num_channels)


def mean_drop_rate(net: SupNet) -> float:
    """The posterior's mean drop rate over all channels (what the uniform baseline uses)."""
    return float(channel_rates(net).mean())


def sample_masks(rates: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n hard keep-masks (n, K): channel k is dropped with probability rates[k] (u ~ U(0,1), drop iff
    u < p, the official code's floor(u + p) = 1 rule)."""
    u = torch.rand(n, rates.numel(), generator=generator, device=rates.device)
    return u >= rates


def within_budget(plan: Plan, masks: torch.Tensor, budget: Budget | None) -> torch.Tensor:
    """(M,) bool: which masks' pruned networks meet the budget (all True without one)."""
    if budget is None or not budget.is_set:
        return torch.ones(masks.shape[0], dtype=torch.bool, device=masks.device)
    macs, params = plan.costs(masks)
    ok = torch.ones_like(macs, dtype=torch.bool)
    if budget.macs is not None:
        ok &= macs <= budget.macs
    if budget.params is not None:
        ok &= params <= budget.params
    return ok


@dataclass
class Draw:
    """Masks that passed the budget, and how many were drawn to get them."""

    masks: torch.Tensor
    drawn: int


def draw_masks(plan: Plan, rates: torch.Tensor, n: int, generator: torch.Generator, budget: Budget | None = None,
               max_draws: int | None = None, chunk: int = 512) -> Draw:
    """Up to n masks from per-channel `rates`, over-budget ones rejected before any scoring.

    Draws in chunks until n masks pass or `max_draws` (default 50 n) were drawn.
    """
    max_draws = max_draws if max_draws is not None else 50 * n
    kept: list[torch.Tensor] = []
    have = drawn = 0
    while have < n and drawn < max_draws:
        m = sample_masks(rates, min(chunk, max_draws - drawn), generator)
        drawn += m.shape[0]
        m = m[within_budget(plan, m, budget)][: n - have]
        kept.append(m)
        have += m.shape[0]
    masks = torch.cat(kept) if kept else torch.zeros(0, plan.num_channels, dtype=torch.bool, device=rates.device)
    return Draw(masks, drawn)


STEM_CACHE_BYTES = 1 << 30
"""The most memory `score_masks` spends on keeping the stem's output of the scoring images."""


@torch.no_grad()
def score_masks(net: SupNet, masks: torch.Tensor, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                fold: int = 1000, stem_cache_bytes: int | None = None,
                channels_last: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy and mean cross-entropy (each (M,), float64, on the CPU) of the supernet under each hard
    mask, on `batches`, through `nas_common.oneshot.score_candidates`.

    `batches` is a list of (x, y) or any re-iterable loader (read once per group of masks). The
    supernet runs in eval mode with its trained weights and BatchNorm statistics (no fine-tuning, no
    re-estimation). Masks are folded into the batch: with image batches of b images, max(1, fold // b)
    masks share one forward pass (one mask alone zeroes the weights' input slices instead). The sums
    stay on the device and are read once, at the end.

    The stem holds no architecture variable, so when `batches` is a list (already in memory) whose stem
    output fits in `stem_cache_bytes` (default `STEM_CACHE_BYTES`), the stem runs once per image instead of
    once per mask and image (the same numbers: the same operations on the same inputs; 0 turns the cache
    off).

    With `channels_last` (the default) the images and the supernet's conv weights are put in NHWC for the
    call (the convolutions run faster so: 1.42x on this project's CPU, bench_posterior --layout; not
    measured on CUDA) and the weights are put back in their own layout after it; the scores are those of
    the default layout up to float rounding.
    """
    M = masks.shape[0]
    empty = torch.zeros(M, dtype=torch.float64)
    if M == 0:
        return empty, empty.clone()
    first = next(iter(batches), None)
    if first is None:
        return empty, empty.clone()
    per = max(1, fold // int(first[1].shape[0]))
    net.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    run: Callable[[torch.Tensor], torch.Tensor] = net  # through __call__: hooks see the images
    cap = STEM_CACHE_BYTES if stem_cache_bytes is None else stem_cache_bytes
    with _conv_weights_in(net, fmt):
        if channels_last:
            if not isinstance(batches, (list, tuple)):
                batches = _ReIterated(batches, fmt)
            else:
                batches = [(_to_format(x, fmt), y) for x, y in batches]
                first = batches[0]
        if isinstance(batches, (list, tuple)) and cap > 0:
            h0 = net.stem(first[0])
            images = sum(int(y.shape[0]) for _, y in batches)
            if h0.element_size() * h0[0].numel() * images <= cap:
                batches = [(h0, first[1])] + [(net.stem(x), y) for x, y in list(batches)[1:]]
                run = net.forward_from_stem

        def forward(cands: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            with net.masked(cands):
                if cands.shape[0] > 1:
                    x = x.repeat(cands.shape[0], 1, 1, 1).contiguous(memory_format=fmt)
                return run(x)

        scores = score_candidates(masks, forward, batches, model=net, group=per)
    scores = torch.tensor(scores, dtype=torch.float64)
    return scores[:, 0].contiguous(), scores[:, 1].contiguous()


def _to_format(x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    return x.contiguous(memory_format=fmt) if x.dim() == 4 else x


class _ReIterated:
    """A re-iterable loader whose images come out in memory format `fmt`."""

    def __init__(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], fmt: torch.memory_format) -> None:
        self.batches, self.fmt = batches, fmt

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return ((_to_format(x, self.fmt), y) for x, y in self.batches)


@contextmanager
def _conv_weights_in(net: torch.nn.Module, fmt: torch.memory_format) -> Iterator[None]:
    """The net's 4-D parameters in memory format `fmt` for the block, each put back in its own layout
    (its strides) after it: the caller's model is left as it was."""
    saved = []
    for p in net.parameters():
        if p.dim() == 4 and not p.is_contiguous(memory_format=fmt):
            saved.append((p, p.data))
            p.data = p.data.contiguous(memory_format=fmt)
    try:
        yield
    finally:
        for p, data in saved:
            p.data = data


def best_index(acc: torch.Tensor, loss: torch.Tensor) -> int:
    """The best mask: highest accuracy, ties broken by the lower loss, then by the earlier draw."""
    order = torch.argsort(loss, stable=True)
    order = order[torch.argsort(-acc[order], stable=True)]
    return int(order[0])
