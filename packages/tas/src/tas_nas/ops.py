"""TAS's building blocks: channel-wise interpolation, two-width Gumbel sampling, the searchable conv.

Channel-wise interpolation (CWI) aligns a feature map of c channels to C >= c channels by adaptive
average pooling over the channel axis: output channel i is the mean of input channels
[floor(i*c/C), ceil((i+1)*c/C)), which for c <= C is one or two channels (`lo`, `hi`). It is linear, so
a conv's "BN per candidate width, interpolate both candidates, mix with weights pA, pB" is one
per-channel affine map followed by a fixed sparse channel mix; `SearchConvBN` computes it as a single
CxC 1x1 matmul (`mix="dense"`, cheap for CIFAR widths) or as four channel gathers (`mix="gather"`,
O(C) per pixel for wide ImageNet layers), never as a Python loop over candidates.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from nas_common.ops import PointwiseConv2d

__all__ = ["channelwise_interpolate", "cwi_index", "cwi_matrix", "gumbel_like", "select_two", "gumbel_softmax",
           "masked_log_softmax", "tau_at", "SearchConvBN"]

NEG = -1e30  # stands for -inf in masked logits (finite, so no NaN in softmax gradients)


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


def select_two(logits: torch.Tensor, mask: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TAS's two-width sampling for every row of `logits` (rows: convs, columns: candidate widths).

    l = (log_softmax(a) + Gumbel) / tau; two distinct candidates are drawn (without gradient) from
    softmax(l); their mixing weights are softmax(l) restricted to the pair and renormalised, which is
    differentiable in `logits`. A row with a single valid candidate yields it twice with weights 1, 0.
    Returns (indices (R, 2) long, weights (R, 2)).
    """
    g = (masked_log_softmax(logits, mask) + gumbel_like(logits)) / tau
    g = g.masked_fill(~mask, NEG)
    with torch.no_grad():
        probs = torch.softmax(g, dim=-1) + 1e-7 * mask + 1e-30  # every valid candidate reachable
        idx = torch.multinomial(probs, 2, replacement=False)
    picked = g.gather(1, idx)
    return idx, torch.softmax(picked, dim=-1)


def gumbel_softmax(logits: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """Gumbel-softmax probabilities over every valid candidate (TAS's depth aggregation weights)."""
    g = (masked_log_softmax(logits, mask) + gumbel_like(logits)) / tau
    return torch.softmax(g.masked_fill(~mask, NEG), dim=-1)


def tau_at(epoch: int, epochs: int, tau_max: float, tau_min: float) -> float:
    """Cosine annealing of the Gumbel temperature from tau_max (epoch 0) towards tau_min."""
    return tau_min + (tau_max - tau_min) * (1.0 + math.cos(math.pi * epoch / max(1, epochs))) / 2.0


# ---------------------------------------------------------------------------------------------------
# the searchable conv
# ---------------------------------------------------------------------------------------------------
class SearchConvBN(nn.Module):
    """A full-width conv whose output width is one of `choices`, mixed from two sampled candidates.

    forward(x, idx, p): x has the full input width; `idx` (2,) picks two candidate widths c_A, c_B and
    `p` (2,) mixes them. As in TAS, the conv runs once at full width, the first c_k output channels go
    through candidate k's own BatchNorm (batch statistics are shared, affine and running statistics
    are per candidate), each is interpolated back to full width, and the two are mixed: p_A*A + p_B*B.
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
        self.mix = ("dense" if c_out <= 256 else "gather") if mix == "auto" else mix
        if self.mix not in ("dense", "gather"):
            raise ValueError(f"mix must be 'dense', 'gather' or 'auto', got {mix!r}")
        if self.mix == "dense":
            self.register_buffer("cwi", torch.stack([cwi_matrix(c, c_out) for c in self.choices]), persistent=False)
        else:
            lo, hi = zip(*(cwi_index(c, c_out) for c in self.choices), strict=False)
            self.register_buffer("cwi_lo", torch.stack(lo), persistent=False)
            self.register_buffer("cwi_hi", torch.stack(hi), persistent=False)

    def forward(self, x: torch.Tensor, idx: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.training:
            var, mean = torch.var_mean(y, dim=(0, 2, 3), unbiased=False)
            with torch.no_grad():  # each sampled candidate's running statistics follow the batch
                n = y.numel() // y.shape[1]
                m = self.momentum
                self.running_mean.index_copy_(0, idx, (1 - m) * self.running_mean[idx] + m * mean.detach())
                unbiased = var.detach() * (n / max(1, n - 1))
                self.running_var.index_copy_(0, idx, (1 - m) * self.running_var[idx] + m * unbiased)
            mean2, rstd2 = mean.expand(2, -1), torch.rsqrt(var + self.eps).expand(2, -1)
        else:
            mean2, rstd2 = self.running_mean[idx], torch.rsqrt(self.running_var[idx] + self.eps)
        scale = self.weight[idx] * rstd2  # (2, C): candidate k's BN as a per-channel affine map
        shift = self.bias[idx] - scale * mean2
        if self.mix == "dense":
            m = self.cwi[idx]  # (2, C, C)
            w = torch.einsum("k,kij,kj->ij", p, m, scale)
            b = torch.einsum("k,kij,kj->i", p, m, shift)
            return F.conv2d(y, w[:, :, None, None], b)
        lo, hi = self.cwi_lo[idx], self.cwi_hi[idx]  # (2, C) each
        cols = torch.cat([lo, hi])  # (4, C): source channel of each of the four terms
        half_p = 0.5 * p
        coef = torch.cat([half_p[:, None] * scale.gather(1, lo), half_p[:, None] * scale.gather(1, hi)])
        bias = (half_p[:, None] * (shift.gather(1, lo) + shift.gather(1, hi))).sum(0)
        n, c, h, w_ = y.shape
        ys = y.index_select(1, cols.flatten()).view(n, 4, c, h, w_)
        return torch.einsum("ntchw,tc->nchw", ys, coef) + bias.view(1, c, 1, 1)
