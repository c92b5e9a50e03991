"""The hybrid representation of the paper: convolutions whose input channels carry architecture variables.

A `GatedConv` is a conv whose *input channels* are switched on and off. In the supernet each one is a
group (layer, kernel-size group) with a single learned drop rate p = sigmoid(p_logit):

* training: concrete (relaxed Bernoulli) dropout on the input channels, one noise draw per example and
  channel, temperature tau, and NO 1/(1-p) rescale (paper Eq. 16; the official `Conv2d_with_CD`); with a
  fixed drop rate (`fixed_rate`, the paper's "Random" baseline: p predefined, not learnt) plain hard
  Bernoulli dropout at p, again without rescale;
* evaluation without masks: the expected mask, i.e. the input times (1 - p);
* hard masks (posterior-guided sampling): a given {0,1} mask per channel. Several masks are evaluated
  in one forward by folding them into the batch: with M masks and a batch of M*n images, images
  [i*n, (i+1)*n) see mask i (see `fold_mul`).

In a physically pruned network the same module has no gate: it keeps only the selected input channels
(`in_idx`, an index_select on its input) and its weight has that many input channels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def fold_mul(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x (M*n, C, H, W) times per-mask factors m (M, C) or (M, 1): image block i gets row i of m."""
    M = m.shape[0]
    if x.shape[0] == M:
        return x * m.view(M, m.shape[1], 1, 1)
    return (x.view(M, -1, *x.shape[1:]) * m.view(M, 1, m.shape[1], 1, 1)).view(x.shape)


class GatedConv(nn.Module):
    """A bias-free conv with gated input channels (supernet) or selected input channels (pruned net)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, *,
                 in_idx: torch.Tensor | None = None, gated: bool = False, p_init: float = 0.1,
                 temperature: float = 0.2) -> None:
        super().__init__()
        kept = cin if in_idx is None else int(in_idx.numel())
        self.conv = nn.Conv2d(kept, cout, kernel, stride=stride, padding=dilation * (kernel - 1) // 2,
                              dilation=dilation, bias=False)
        self.register_buffer("in_idx", None if in_idx is None else in_idx.long().clone(), persistent=False)
        self.gated = gated
        self.temperature = float(temperature)
        if gated:
            self.p_logit = nn.Parameter(torch.tensor(math.log(p_init) - math.log1p(-p_init)))
        self.hard_mask: torch.Tensor | None = None  # (M, cin) float {0,1}, set by SupNet.masked()
        self.fixed_rate = False  # True: p is not learnt and training drops channels with hard Bernoulli draws

    @property
    def channels(self) -> int:
        """How many input channels this group switches (the K of the regulariser)."""
        return self.conv.in_channels

    @property
    def p(self) -> torch.Tensor:
        """The learned drop rate of this group."""
        return torch.sigmoid(self.p_logit)

    def concrete_mask(self, batch: int, channels: int, like: torch.Tensor) -> torch.Tensor:
        """A relaxed keep-mask (batch, channels) in (0, 1): 1 - sigmoid((logit p + logistic noise) / tau).

        The logistic noise is drawn as log(-log u1) - log(-log u2), as in the official code, always in
        float32: bf16/fp16 uniforms are so coarse near 0 and 1 that the noise would be cut off at about
        +-8 (a group with a small drop rate never dropped) or reach -inf/NaN where u rounds to 1. The mask
        is returned in `like`'s dtype.
        """
        eps = 1e-7
        u = torch.rand(2, batch, channels, device=like.device, dtype=torch.float32).clamp_(eps, 1 - eps)
        noise = torch.log(-torch.log(u[0])) - torch.log(-torch.log(u[1]))
        drop = torch.sigmoid((self.p_logit.float() + noise) / self.temperature)
        return (1.0 - drop).to(like.dtype)

    def alive(self) -> torch.Tensor | None:
        """(M, 1) float: 1 where the hard mask keeps at least one channel; None without hard masks."""
        if self.hard_mask is None:
            return None
        return (self.hard_mask.amax(dim=1, keepdim=True) > 0).to(self.hard_mask.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_idx is not None:
            x = x.index_select(1, self.in_idx)
        if self.gated:
            if self.hard_mask is not None and self.hard_mask.shape[0] == 1:
                # one mask for the whole batch: zero the weight's input slices instead of the activations
                # (the same products, one small op instead of a pass over the batch)
                w = self.conv.weight * self.hard_mask.to(self.conv.weight.dtype).view(1, -1, 1, 1)
                c = self.conv
                return F.conv2d(x, w, None, c.stride, c.padding, c.dilation, c.groups)
            if self.hard_mask is not None:
                x = fold_mul(x, self.hard_mask.to(x.dtype))
            elif self.training and self.fixed_rate:
                keep = torch.rand(x.shape[0], x.shape[1], device=x.device) >= self.p.detach().float()
                x = x * keep.to(x.dtype)[:, :, None, None]
            elif self.training:
                x = x * self.concrete_mask(x.shape[0], x.shape[1], x)[:, :, None, None]
            else:
                x = x * (1.0 - self.p).to(x.dtype)
        return self.conv(x)

    def regulariser(self, l2: float, N: float, form: str = "paper") -> torch.Tensor:
        """This group's KL term of the negative ELBO (see `regulariser`)."""
        return Regulariser([self], l2, N, form)()


class Regulariser:
    """The KL term of the paper's loss (see `regulariser`) over a fixed list of groups, vectorised: one
    stack of the drop-rate logits and one fused norm of the weights per call, whatever the number of
    groups (a Python loop would launch a few kernels per group, ~500 per step for SupNet-MI). The
    channel counts are put on the device once, here, not in the step."""

    def __init__(self, gates: list[GatedConv], l2: float, N: float, form: str = "paper") -> None:
        if not gates:
            raise ValueError("no gated convolutions: is this a supernet built with gated=True?")
        if form not in ("paper", "concrete"):  # validated by the config; kept for direct callers
            raise ValueError(f"regulariser form {form!r} is not 'paper' or 'concrete'")
        self.gates = list(gates)
        self.form = form
        self.l2_2N = float(l2) / (2.0 * float(N))
        w = gates[0].conv.weight
        self.k_N = torch.tensor([g.channels for g in gates], dtype=w.dtype, device=w.device) / float(N)

    def __call__(self) -> torch.Tensor:
        p = torch.sigmoid(torch.stack([g.p_logit for g in self.gates]))
        w2 = torch.stack(torch._foreach_norm([g.conv.weight for g in self.gates])).pow(2)
        neg_entropy = p * torch.log(p)
        if self.form == "concrete":
            neg_entropy = neg_entropy + (1 - p) * torch.log1p(-p)
        return (self.l2_2N * (1 - p) * w2 + self.k_N.to(p.device) * neg_entropy).sum()


def regulariser(gates: list[GatedConv], l2: float, N: float, form: str = "paper") -> torch.Tensor:
    """The architecture/weight regulariser of the paper's loss (Eq. 15), summed over groups g:

        paper:    sum_g  l2 * (1 - p_g) / (2 N) * ||W_g||^2  +  (K_g / N) * p_g * log p_g
        concrete: sum_g  l2 * (1 - p_g) / (2 N) * ||W_g||^2  +  (K_g / N) * [p log p + (1-p) log(1-p)]

    W_g is the conv weight the group gates (all its input-channel slices), K_g its number of input
    channels, N the data-set size scale (5e5 for CIFAR in the paper). The first term is the prior
    N(0, I/l2) on the sampled weights (its expectation over the Bernoulli keep-mask); the second is
    minus the entropy of the group's drop variables, so the loss rewards uncertain rates (`paper`: the
    -p log p part only, as Eq. 15 defines H, minimum at p = 1/e; `concrete`: the full binary entropy of
    the official PyTorch code's Concrete-Dropout term, minimum at p = 1/2). Sign: Eq. 15 as printed
    subtracts (1/N) H with H = sum k p log p, i.e. it would *add* the entropy and push p to 0 or 1; the
    derivation (the KL of the variational Bernoulli, Gal 2016) and the official `KLreg` both give the
    sign used here.
    """
    return Regulariser(gates, l2, N, form)()


__all__ = ["GatedConv", "Regulariser", "fold_mul", "regulariser"]
