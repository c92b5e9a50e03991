"""Judging candidates of a weight-sharing network with the weights they inherit (every one-shot method).

- `recalibrate_bn(model, batches, forward)`: re-estimate the BatchNorm running statistics that one
  sub-network uses, as the plain average of the batch statistics over `batches` (train-mode forwards
  without gradients). The search accumulated its statistics under a mixture of sub-networks, which do
  not describe any one of them; standard one-shot practice (SPOS, OFA) recomputes them per candidate.
- `batch_statistics(model)`: normalise with each batch's own statistics and leave the running ones
  untouched (how NAT's official code scores candidates).
- `score_candidates(candidates, forward, batches)`: held-out top-1 and loss of every candidate, no
  gradients, the sums kept on the device and read once at the end; candidates can share a forward
  (`group`) when the network folds several into one batch.
- `Accumulator`: device-side sums of a loss, correct predictions and counts (and any other named sum),
  read once (`compute`), optionally summed over ranks.

A "module with running statistics" is any module with `running_mean` and `momentum` (torch's
BatchNorm layers, and a method's own per-candidate BN as long as it follows BatchNorm's momentum rule).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from . import dist

C = TypeVar("C")
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]

__all__ = ["Accumulator", "batch_statistics", "recalibrate_bn", "score_candidates", "stat_modules"]


def stat_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of `model` that keep running statistics."""
    return [m for m in model.modules() if hasattr(m, "running_mean") and hasattr(m, "momentum")
            and getattr(m, "running_mean", None) is not None]


@contextlib.contextmanager
def _saved_momenta(mods: Sequence[nn.Module]) -> Iterator[None]:
    saved = [m.momentum for m in mods]
    try:
        yield
    finally:
        for m, mom in zip(mods, saved, strict=True):
            m.momentum = mom


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]],
                   forward: Callable[[torch.Tensor], Any] | None = None) -> None:
    """Re-estimate the running statistics that `forward` uses (default `model(x)`) from `batches`.

    With momentum 1/(t+1) at batch t, a module's running mean and variance end as the average over
    the batches of its batch statistics, and nothing from before survives for the modules the forward
    uses (those it does not use keep theirs), so the result does not depend on which candidates were
    scored before. `model` is left in eval mode, its momenta restored; no weight changes."""
    forward = forward or model
    mods = stat_modules(model)
    model.train()
    with _saved_momenta(mods):
        for t, (x, _) in enumerate(batches):
            for m in mods:
                m.momentum = 1.0 / (t + 1)
            forward(x)
    model.eval()


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Inside: the model is in eval mode except its statistics modules, which normalise with the batch's
    statistics (train mode) at momentum 0, so their running statistics stay as they were."""
    was = model.training
    mods = stat_modules(model)
    model.eval()
    try:
        with _saved_momenta(mods):
            for m in mods:
                m.train()
                m.momentum = 0.0
            yield
    finally:
        model.train(was)


class Accumulator:
    """Sums of loss, correct top-1 predictions and examples on the device; one host read in `compute`.

        acc = Accumulator(device)
        for x, y in loader:
            acc.add_batch(model(x), y)                  # CE loss, correct, n
            acc.add(penalty=pen)                        # any other sum
        acc.compute()   # {"loss": mean CE, "top1": fraction correct, "n": examples, "penalty": sum / n}
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._names: list[str] = ["loss", "correct", "n"]
        self._sums = torch.zeros(3, dtype=torch.float64, device=self.device)

    def add_batch(self, logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        """Add one batch: `loss` is the batch's mean loss (default: cross-entropy of `logits`)."""
        n = y.shape[0]
        with torch.no_grad():
            ce = F.cross_entropy(logits.detach().float(), y, reduction="sum") if loss is None else loss.detach() * n
            hits = (logits.detach().argmax(1) == y).sum()
            self._sums[:2] += torch.stack([ce.double(), hits.double()])
            self._sums[2] += n

    def add(self, **sums: torch.Tensor | float) -> None:
        """Add named sums (divided by the example count in `compute`)."""
        for name, value in sums.items():
            if name not in self._names:
                self._names.append(name)
                self._sums = torch.cat([self._sums, self._sums.new_zeros(1)])
            i = self._names.index(name)
            v = value.detach().double() if isinstance(value, torch.Tensor) else float(value)
            self._sums[i] += v

    def compute(self, reduce_ranks: bool = False) -> dict[str, float]:
        """Means per example (`top1` as a fraction) and the count `n`; with `reduce_ranks`, over all ranks."""
        sums = self._sums.clone()
        if reduce_ranks:
            dist.all_reduce_(sums)
        values = dict(zip(self._names, sums.tolist(), strict=True))  # the one host read
        n = values.pop("n")
        correct = values.pop("correct")
        out = {k: v / n if n else float("nan") for k, v in values.items()}
        out["top1"] = correct / n if n else float("nan")
        out["n"] = int(n)
        return out


@torch.no_grad()
def score_candidates(candidates: Sequence[C], forward: Callable[[Sequence[C], torch.Tensor], torch.Tensor],
                     batches: Batches, *, model: nn.Module | None = None,
                     calibration: Sequence[tuple[torch.Tensor, Any]] = (), group: int = 1,
                     bn: str = "eval") -> list[tuple[float, float]]:
    """(top-1 fraction, mean cross-entropy) of each candidate on `batches`, with inherited weights.

    `forward(cands, x)` runs the shared network as the candidates `cands` (at most `group` of them) on
    the images `x` and returns logits of shape (len(cands) * len(x), classes), candidate-major.
    `batches` is re-iterated per group (a loader or a list). `bn` says how statistics modules
    normalise: "eval" (their running statistics), "batch" (the batch's, `batch_statistics`), or
    "recalibrate" (re-estimated per candidate on `calibration` first; needs `model` and `group` 1).
    Sums stay on the device; the results are read from it once."""
    if bn not in ("eval", "batch", "recalibrate"):
        raise ValueError(f"bn must be 'eval', 'batch' or 'recalibrate', got {bn!r}")
    if bn != "eval" and model is None:
        raise ValueError(f"bn={bn!r} needs the shared `model`")
    if bn == "recalibrate" and (group != 1 or not calibration):
        raise ValueError("bn='recalibrate' needs calibration batches and group=1 (one candidate per forward)")
    k = len(candidates)
    sums: torch.Tensor | None = None
    for start in range(0, k, max(1, group)):
        cands = candidates[start:start + max(1, group)]
        g = len(cands)
        if bn == "recalibrate":
            recalibrate_bn(model, calibration, lambda x, c=cands: forward(c, x))
        ctx = batch_statistics(model) if bn == "batch" else contextlib.nullcontext()
        if model is not None and bn != "batch":
            model.eval()
        with ctx:
            for x, y in batches:
                logits = forward(cands, x).float()
                yy = y.repeat(g)
                hit = (logits.argmax(1) == yy).view(g, -1).sum(1).double()
                ce = F.cross_entropy(logits, yy, reduction="none").view(g, -1).sum(1).double()
                n = torch.full((g,), float(y.shape[0]), dtype=torch.float64, device=logits.device)
                part = torch.stack([hit, ce, n], 1)
                if sums is None:
                    sums = torch.zeros(k, 3, dtype=torch.float64, device=logits.device)
                sums[start:start + g] += part
    if sums is None:
        return [(float("nan"), float("nan"))] * k
    rows = sums.tolist()  # the one host read
    return [(h / n, ce / n) if n else (float("nan"), float("nan")) for h, ce, n in rows]
