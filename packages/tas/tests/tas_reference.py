"""An independent, literal implementation of TAS's search-time forward, for tests (and the benchmark's
"variable-width step" row). Written from the paper's equations and the official code's description
(../shared/papers/official-code-notes.md), not from `tas_nas`'s fixed-shape implementation:

* sampling (paper Eq. 3): p_hat = softmax((log softmax(a) + o) / tau) with Gumbel noise o; K distinct
  candidates drawn from p_hat without replacement; mixing weights = p_hat restricted to the K picks and
  renormalised. With fixed noise the draw is made as the K largest of log p_hat + G2 (Gumbel-top-k).
* a conv: its input really is as wide as the previous layer's active width; it is zero-padded up to
  the conv's full input width, the full conv runs, candidate k's output is its first c_k channels, its
  own BatchNorm normalises them, each candidate is interpolated by adaptive average pooling over
  channels to the largest sampled width, and they are mixed with the weights.
* residual: the narrower tensor is added into the first channels of the wider one.
* a stage: every block runs; the outputs after the candidate depths are interpolated to the largest
  width among them and summed with the Gumbel-softmax depth weights.
* the classifier uses the first columns of its weight.

Tensors here have their real (variable) widths, taken to the host (`.tolist()`) to slice: this is the
per-candidate, host-synchronising cost structure of the official search step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tas_nas.model import SearchResNet


def paper_sample(logits: torch.Tensor, mask: torch.Tensor, tau: float, k: int, g1: torch.Tensor, g2: torch.Tensor
                 ) -> tuple[list[list[int]], torch.Tensor]:
    """Eq. 3 with fixed noise: (the k picks of every row, their renormalised weights (rows, k))."""
    picks, weights = [], []
    for a, valid, o1, o2 in zip(logits, mask, g1, g2, strict=True):
        cand = [j for j in range(len(a)) if valid[j]]
        log_p = torch.log_softmax(a[cand], 0)
        ell = (log_p + o1[cand]) / tau
        log_p_hat = torch.log_softmax(ell, 0)
        order = sorted(range(len(cand)), key=lambda t: -float(log_p_hat[t].detach() + o2[cand[t]]))[:k]
        picks.append([cand[t] for t in order])
        weights.append(torch.softmax(ell[order], 0))
    return picks, torch.stack(weights)


def paper_depth_weights(logits: torch.Tensor, mask: torch.Tensor, tau: float, g: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for a, valid, o in zip(logits, mask, g, strict=True):
        cand = [j for j in range(len(a)) if valid[j]]
        out.append(torch.softmax((torch.log_softmax(a[cand], 0) + o[cand]) / tau, 0))
    return out


def _pad_to(x: torch.Tensor, channels: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return torch.cat([x, x.new_zeros(n, channels - c, h, w)], 1)


def _cwi(x: torch.Tensor, channels: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x if c == channels else F.adaptive_avg_pool3d(x, (channels, h, w))


def _add_into_first(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.shape[1] < b.shape[1]:
        a, b = b, a
    out = a.clone()
    out[:, : b.shape[1]] = out[:, : b.shape[1]] + b
    return out


def _conv(mod, x: torch.Tensor, picks: list[int], weights: torch.Tensor, training: bool) -> torch.Tensor:  # noqa: ANN001
    y = mod.conv(_pad_to(x, mod.conv.in_channels))
    parts = []
    for j in picks:
        c = mod.choices[j]
        parts.append(F.batch_norm(y[:, :c], mod.running_mean[j, :c].clone(), mod.running_var[j, :c].clone(),
                                  mod.weight[j, :c], mod.bias[j, :c], training=training, eps=mod.eps))
    widest = max(t.shape[1] for t in parts)
    return sum(w * _cwi(t, widest) for w, t in zip(weights, parts, strict=True))


def reference_forward(model: SearchResNet, x: torch.Tensor, picks: list[list[int]], weights: torch.Tensor,
                      depth_weights: list[torch.Tensor]) -> torch.Tensor:
    """Logits of `model`'s weights under the sample (`picks[v]`, `weights[v]` per conv, depth weights per stage)."""
    training = model.training
    h = F.relu(_conv(model.stem, x, picks[0], weights[0], training))
    h = model.maxpool(h)
    for s, blocks in enumerate(model.stages):
        outs = []
        for b, blk in enumerate(blocks):
            ids = model.var_of[s][b]
            t = h
            for i, conv in enumerate(blk.convs):
                t = _conv(conv, t, picks[ids[i]], weights[ids[i]], training)
                if i < len(blk.convs) - 1:
                    t = F.relu(t)
            res = h if blk.downsample is None else _conv(blk.downsample, h, picks[ids[-1]], weights[ids[-1]], training)
            h = F.relu(_add_into_first(res, t))
            if b + 1 in model.depth_choices[s]:
                outs.append(h)
        widest = max(o.shape[1] for o in outs)
        h = sum(w * _cwi(o, widest) for w, o in zip(depth_weights[s], outs, strict=True))
    feat = torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)
    return F.linear(feat, model.fc.weight[:, : feat.shape[1]], model.fc.bias)
