"""TAS's building blocks: channel-wise interpolation, Gumbel sampling of K widths, the searchable conv.

Channel-wise interpolation (CWI) aligns a feature map of c channels to m >= c channels by adaptive
average pooling over the channel axis: output channel i is the mean of input channels
[floor(i*c/m), ceil((i+1)*c/m)), which for c <= m is one or two channels (`lo`, `hi`).

Fixed shapes, no host sync. A feature map whose *active* width is w (the first w channels; TAS's
tensors really are w channels wide) is stored at the layer's full width C with zeros in channels
>= w. That zero padding is exactly what TAS does to a conv's input ("pad up to the full input width,
which simulates the pruned input"), a residual add of two zero-padded maps is TAS's "add the narrower
one into the first channels of the wider one", and the classifier applied to a zero-padded feature
uses only the first columns of its weight. The widths themselves are device tensors computed from the
sampled indices, so nothing in a step depends on a host-side value.

A searchable conv's "BN per candidate width, interpolate every candidate to the largest sampled width
m, mix with weights p" is linear once the batch statistics are known: one per-channel affine map per
candidate followed by a sparse channel mix. `SearchConvBN` computes it as one CxC 1x1 matmul
(`mix="dense"`, cheap for CIFAR widths) or as 2K channel gathers (`mix="gather"`, O(C) per pixel for
wide ImageNet layers), never as a Python loop over candidates.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nas_common.ops import PointwiseConv2d
from nas_common.registry import Registry

__all__ = ["channelwise_interpolate", "cwi_index", "cwi_matrix", "cwi_rows", "cwi_apply", "gumbel_like",
           "select_k", "select_two", "gumbel_softmax", "masked_log_softmax", "tau_at", "TAU_SCHEDULES",
           "SearchConvBN", "DENSE_MAX_WIDTH", "mix_plan", "widest_first"]

NEG = -1e30  # stands for -inf in masked logits (finite, so no NaN in softmax gradients)
DENSE_MAX_WIDTH = 256  # mix="auto": a CxC channel mix up to this width, channel gathers above


def channelwise_interpolate(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Reference CWI: resize the channel axis of `x` (N, c, H, W) to `channels` by adaptive average pooling."""
    n, c, h, w = x.shape
    if c == channels:
        return x
    return F.adaptive_avg_pool3d(x.unsqueeze(1), (channels, h, w)).squeeze(1)


@functools.cache
def _cwi_index_cpu(c: int, C: int) -> tuple[torch.Tensor, torch.Tensor]:
    i = torch.arange(C)
    lo = torch.div(i * c, C, rounding_mode="floor")
    hi = -torch.div(-(i + 1) * c, C, rounding_mode="floor") - 1  # ceil((i+1)c/C) - 1
    return lo, hi


def cwi_index(c: int, C: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For c <= C: (lo, hi) so that CWI(x)[:, i] = (x[:, lo[i]] + x[:, hi[i]]) / 2 (lo == hi: a copy)."""
    if not 1 <= c <= C:
        raise ValueError(f"channel-wise interpolation widens c={c} channels to C={C}: need 1 <= c <= C")
    return _cwi_index_cpu(int(c), int(C))


def cwi_matrix(c: int, C: int) -> torch.Tensor:
    """The (C, C) matrix M with CWI(x[:, :c]) = einsum('ij,njhw->nihw', M, x); columns >= c are zero."""
    lo, hi = cwi_index(c, C)
    m = torch.zeros(C, C)
    rows = torch.arange(C)
    m.index_put_((rows, lo), torch.full((C,), 0.5), accumulate=True)
    m.index_put_((rows, hi), torch.full((C,), 0.5), accumulate=True)
    return m


def cwi_rows(c: torch.Tensor, m: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CWI from c to m channels with tensor-valued widths (1 <= c <= m <= rows), on the device.

    `c` and `m` are integer tensors that broadcast together; the result has their shape plus `rows`:
    (lo, hi, valid), where output channel i < m is (x[lo[i]] + x[hi[i]]) / 2 and channels i >= m are
    zero (`valid` False). Same formula as `cwi_index`, no host sync.
    """
    i = torch.arange(rows, device=c.device)
    c, m = c.unsqueeze(-1), m.unsqueeze(-1)
    lo = torch.div(i * c, m, rounding_mode="floor")
    hi = torch.div((i + 1) * c + m - 1, m, rounding_mode="floor") - 1
    return lo, hi, (i < m).expand_as(lo)


def cwi_apply(x: torch.Tensor, c: torch.Tensor, m: torch.Tensor, weight: torch.Tensor | None = None,
              dense: bool = True) -> torch.Tensor:
    """weight * CWI of the first `c` channels of `x` (N, C, H, W) to `m` channels, zero-padded to C.

    `c`, `m`: 0-d integer tensors; `weight`: an optional 0-d factor folded into the mix (depth aggregation).
    """
    C = x.shape[1]
    lo, hi, valid = cwi_rows(c, m, C)
    coef = 0.5 * valid.to(x.dtype)
    if weight is not None:
        coef = coef * weight
    if dense:
        ar = torch.arange(C, device=x.device)
        mat = ((lo[:, None] == ar).to(x.dtype) + (hi[:, None] == ar).to(x.dtype)) * coef[:, None]
        return F.conv2d(x, mat[:, :, None, None])
    return (x.index_select(1, lo) + x.index_select(1, hi)) * coef.view(1, C, 1, 1)


# ---------------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------------
def gumbel_like(x: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise of x's shape, from the global torch RNG (restored on resume)."""
    u = torch.rand_like(x).clamp_(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log_softmax over the last axis with invalid (mask False) entries at (effectively) -inf."""
    return torch.log_softmax(logits.masked_fill(~mask, NEG), dim=-1)


def select_k(logits: torch.Tensor, mask: torch.Tensor, tau: float, k: int = 2,
             noise: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """TAS's width sampling for every row of `logits` (rows: convs, columns: candidate widths).

    l = (log_softmax(a) + G1) / tau (TAS's Gumbel-perturbed distribution softmax(l)); `k` distinct
    candidates are drawn from softmax(l) without replacement, as the top-k of l + G2 with fresh Gumbel
    noise G2 (the Gumbel-top-k trick: the same distribution as drawing one by one without replacement,
    with no host sync, unlike `torch.multinomial`); their mixing weights are softmax(l) restricted to
    the k picks and renormalised, differentiable in `logits`. `noise` = (G1, G2) fixes the noise (tests).
    A row with fewer than k valid candidates repeats its first pick for the missing ones, with weight 0.
    Returns (indices (R, k) long, weights (R, k)).
    """
    g1, g2 = noise if noise is not None else (gumbel_like(logits), gumbel_like(logits))
    ell = ((masked_log_softmax(logits, mask) + g1) / tau).masked_fill(~mask, NEG)
    with torch.no_grad():
        idx = (ell.detach() + g2).masked_fill(~mask, NEG).topk(k, dim=-1).indices
    weights = torch.softmax(ell.gather(1, idx), dim=-1)  # an invalid pick's logit is NEG: weight 0
    idx = torch.where(mask.gather(1, idx), idx, idx[:, :1])
    return idx, weights


def select_two(logits: torch.Tensor, mask: torch.Tensor, tau: float,
               noise: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`select_k` with k = 2, the paper's setting."""
    return select_k(logits, mask, tau, 2, noise)


def gumbel_softmax(logits: torch.Tensor, mask: torch.Tensor, tau: float, noise: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Gumbel-softmax probabilities softmax((log_softmax(a) + G) / tau) over every valid candidate (TAS's
    depth aggregation weights); `noise` fixes G (tests)."""
    g = noise if noise is not None else gumbel_like(logits)
    ell = (masked_log_softmax(logits, mask) + g) / tau
    return torch.softmax(ell.masked_fill(~mask, NEG), dim=-1)


def _linear_tau(progress: float, tau_max: float, tau_min: float) -> float:
    return tau_max - (tau_max - tau_min) * progress


def _cosine_tau(progress: float, tau_max: float, tau_min: float) -> float:
    return tau_min + (tau_max - tau_min) * (1.0 + math.cos(math.pi * progress)) / 2.0


# tau(epoch) schedules by name: "linear" is the paper's ("linearly decayed from 10 to 0.1"), "cosine"
# the official script's (5 -> 0.1); progress = epoch / epochs, as the official code computes it
TAU_SCHEDULES: Registry[Callable[[float, float, float], float]] = Registry("tau schedule")
TAU_SCHEDULES.register("linear", _linear_tau)
TAU_SCHEDULES.register("cosine", _cosine_tau)


def tau_at(epoch: int, epochs: int, tau_max: float, tau_min: float, schedule: str = "linear") -> float:
    """The Gumbel temperature of `epoch` (0-based): tau_max at epoch 0, annealed towards tau_min."""
    return TAU_SCHEDULES.get(schedule)(epoch / max(1, epochs), tau_max, tau_min)


# ---------------------------------------------------------------------------------------------------
# the searchable conv
# ---------------------------------------------------------------------------------------------------
class SearchConvBN(nn.Module):
    """A full-width conv whose output width is one of `choices`, mixed from K sampled candidates.

    forward(x, idx, p, c, m): x is zero-padded to the full input width; `idx` (K,) picks K candidate
    widths c (K,) (`c[k] = choices[idx[k]]`), `p` (K,) mixes them and m = max(c). As in TAS, the conv
    runs once on the zero-padded input, the first c_k output channels go through candidate k's own
    BatchNorm (batch statistics are shared per channel; affine and running statistics are per
    candidate), each is interpolated to m channels, and they are mixed: sum_k p_k * CWI(BN_k(y[:c_k]), m).
    The result is returned zero-padded to the full output width.
    """

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, choices: list[int], mix: str = "auto",
                 eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.conv = (PointwiseConv2d(c_in, c_out, stride) if k == 1
                     else nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False))
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        self.c_out = c_out
        self.choices = list(choices)
        kk = len(self.choices)
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(kk, c_out))  # BN gamma per candidate width
        self.bias = nn.Parameter(torch.zeros(kk, c_out))  # BN beta per candidate width
        self.register_buffer("running_mean", torch.zeros(kk, c_out))
        self.register_buffer("running_var", torch.ones(kk, c_out))
        self.mix = ("dense" if c_out <= DENSE_MAX_WIDTH else "gather") if mix == "auto" else mix
        if self.mix not in ("dense", "gather"):
            raise ValueError(f"mix must be 'dense', 'gather' or 'auto', got {mix!r}")
        self.register_buffer("choice_width", torch.tensor(self.choices, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor, idx: torch.Tensor, p: torch.Tensor, c: torch.Tensor | None = None,
                m: torch.Tensor | None = None, plan: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """`c`, `m`: the sampled widths and their max (derived from `idx` when None); `plan`: this conv's
        `mix_plan` (computed here when None; `SearchResNet` computes every conv's at once, with the
        candidates `widest_first`)."""
        if plan is None:
            if c is None:
                c = self.choice_width[idx]
            if self.mix == "gather":
                idx, p, c = widest_first(idx, p, c)
            if m is None:
                m = c.max()
            plan = mix_plan(c, m, self.c_out, self.mix == "dense", self.weight.dtype)
        y = self.conv(x)
        C = self.c_out
        if self.training:
            # normalise with the batch statistics by the native kernel (one pass, fast backward); with
            # momentum 1 it also leaves the batch mean and unbiased variance in `stats`
            stats = y.new_zeros(2, C)
            y = F.batch_norm(y, stats[0], stats[1], None, None, True, 1.0, self.eps)
            with torch.no_grad():  # each sampled candidate's running statistics follow the batch
                rate = torch.zeros(len(self.choices), 1, dtype=y.dtype, device=y.device).index_fill_(
                    0, idx, self.momentum)
                self.running_mean.lerp_(stats[0].expand_as(self.running_mean), rate)
                self.running_var.lerp_(stats[1].expand_as(self.running_var), rate)
            scale, shift = self.weight[idx], self.bias[idx]  # (K, C): candidate k's BN affine on y-hat
        else:
            scale = self.weight[idx] * torch.rsqrt(self.running_var[idx] + self.eps)  # candidate k's BN as an
            shift = self.bias[idx] - scale * self.running_mean[idx]  # affine map of y: (K, C) each
        if self.mix == "dense":
            (mat,) = plan  # (K, C, C): candidate k's CWI to m channels, zero rows >= m
            w = torch.einsum("k,kij,kj->ij", p, mat, scale)
            b = torch.einsum("k,kij,kj->i", p, mat, shift)
            return F.conv2d(y, w[:, :, None, None], b)
        cols, half = plan  # (2K, C) source channel of each term, (2K, C) 0.5 or 0 (rows >= m)
        k = len(idx)
        pk = torch.cat([p, p])[:, None] * half
        coef = pk * torch.cat([scale, scale]).gather(1, cols)  # (2K, C)
        bias = (pk * torch.cat([shift, shift]).gather(1, cols)).sum(0)
        # the widest candidate (the first, see `widest_first`) is aligned to itself: no gather for it
        out = torch.addcmul(bias.view(1, C, 1, 1), y, (coef[0] + coef[k]).view(1, C, 1, 1))
        for t in [*range(1, k), *range(k + 1, 2 * k)]:
            out = torch.addcmul(out, y.index_select(1, cols[t]), coef[t].view(1, C, 1, 1))
        return out


def widest_first(idx: torch.Tensor, p: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The candidates of every row reordered by decreasing width (the mix is symmetric in them)."""
    order = torch.argsort(c, dim=-1, descending=True, stable=True)
    return idx.gather(-1, order), p.gather(-1, order), c.gather(-1, order)


def mix_plan(c: torch.Tensor, m: torch.Tensor, C: int, dense: bool, dtype: torch.dtype = torch.float32
             ) -> tuple[torch.Tensor, ...]:
    """The fixed (weight-independent) part of the mix of candidates of widths `c` (..., K) aligned to `m` (...):
    dense: ((..., K, C, C) CWI matrices, zero rows >= m); gather: ((..., 2K, C) source channels, (..., 2K, C)
    factors 0.5 or 0). Leading dimensions batch many convs of the same full width at once."""
    lo, hi, valid = cwi_rows(c, m.unsqueeze(-1), C)  # (..., K, C)
    half = 0.5 * valid.to(dtype)
    if dense:
        ar = torch.arange(C, device=c.device)
        mat = ((lo.unsqueeze(-1) == ar).to(half.dtype) + (hi.unsqueeze(-1) == ar).to(half.dtype)) * half.unsqueeze(-1)
        return (mat,)
    return torch.cat([lo, hi], -2), torch.cat([half, half], -2)
