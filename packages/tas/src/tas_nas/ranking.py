"""Hard configurations of the TAS super network: sampling them from the learned distributions and scoring
them with the shared weights (the harness's ranking check, `TASSearch.sample_and_score`).

A configuration is one width choice per conv variable (`widx`, shape (convs,)) and one depth choice per
stage (`didx`, shape (stages,)), as indices into `SearchResNet.choices` / `depth_choices`.

* `sample_configs` draws configurations from the plain softmax of the architecture logits (the
  distributions whose expected FLOPs the search optimised), with a `torch.Generator`, and keeps the
  first `n` whose networks differ. Widths of blocks beyond a stage's sampled depth do not exist in that
  network, so two draws that differ only there are the same network and count once.
* `one_hot_sample` turns a configuration into the `(idx, p, depth weights)` that `SearchResNet.forward`
  takes: every conv's K candidates are the chosen width K times with weights (1, 0, ...), every stage's
  depth weights are one-hot (blocks beyond the chosen depth at their narrowest width, so that they do
  not widen the depth aggregation). That forward is the searchable network at the hard choice: each
  conv's chosen-width BN on its zero-padded input, and the chosen depth's output.
* `recalibrate_bn` re-estimates the running statistics that a configuration uses (see its docstring for
  why the search's statistics do not fit a hard configuration).
* `score_configs` returns the held-out top-1 accuracy of each configuration: batched over images, no
  gradients, eval mode.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .model import SearchResNet, spec_from_indices
from .ops import SearchConvBN

__all__ = ["one_hot_sample", "recalibrate_bn", "sample_configs", "score_configs"]

Config = tuple[torch.Tensor, torch.Tensor]  # (width index per conv variable, depth index per stage)


def sample_configs(model: SearchResNet, n: int, generator: torch.Generator, max_draws: int) -> list[Config]:
    """Up to `n` configurations of distinct networks, in order of first draw, from `max_draws` draws.

    Each draw picks every conv's width from `softmax(width_logits)` and every stage's depth from
    `softmax(depth_logits)` independently (the search's product distribution; invalid padded choices
    have probability 0). The draws are made on the CPU with `generator`, so they do not depend on the
    device. When the distribution is too peaked to give `n` distinct networks in `max_draws` draws,
    fewer are returned.
    """
    with torch.no_grad():
        wp = model.width_probs().detach().float().cpu()
        dp = model.depth_probs().detach().float().cpu()
    widx = torch.multinomial(wp, max_draws, replacement=True, generator=generator).T  # (draws, convs)
    didx = torch.multinomial(dp, max_draws, replacement=True, generator=generator).T  # (draws, stages)
    layout = model.layout()
    seen: set[str] = set()
    out: list[Config] = []
    for w, d in zip(widx, didx, strict=False):
        key = json.dumps(spec_from_indices(layout, w.tolist(), d.tolist()), sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append((w, d))
            if len(out) == n:
                break
    return out


def one_hot_sample(model: SearchResNet, widx: torch.Tensor, didx: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `forward` sample of a hard configuration: (idx (convs, k), p (convs, k), depth weights).

    Every conv's k candidates are its chosen width k times, with weights (1, 0, ...), and every stage's
    depth weights are one-hot. The convs of blocks beyond a stage's chosen depth are not part of that
    network, but TAS's depth aggregation interpolates the chosen depth's output to the widest output
    among all candidate depths; they are therefore set to their narrowest width, which keeps every
    deeper output no wider than the chosen one (widths only grow along a stage's identity shortcuts),
    so the forward is the pruned network's whatever widths a draw gave those blocks.
    """
    dev, dtype = model.width_logits.device, model.width_logits.dtype
    w = torch.as_tensor(widx, device=dev).long()
    d = torch.as_tensor(didx, device=dev).long()
    if w.shape != model.width_mask.shape[:1] or d.shape != model.depth_mask.shape[:1]:
        raise ValueError(f"a configuration has {model.width_mask.shape[0]} width and {model.depth_mask.shape[0]} "
                         f"depth indices, got {tuple(w.shape)} and {tuple(d.shape)}")
    if not (model.width_mask.gather(1, w[:, None]).all() and model.depth_mask.gather(1, d[:, None]).all()):
        raise ValueError("a width or depth index points at a padded (invalid) choice")
    beyond = [v for s, (vars_s, j) in enumerate(zip(model.var_of, d.tolist(), strict=True))
              for ids in vars_s[model.depth_choices[s][j]:] for v in ids]
    w = w.index_fill(0, torch.tensor(beyond, dtype=torch.long, device=dev), 0) if beyond else w
    idx = w[:, None].expand(-1, model.k).contiguous()
    p = torch.zeros(w.shape[0], model.k, device=dev, dtype=dtype)
    p[:, 0] = 1.0
    dw = F.one_hot(d, model.depth_mask.shape[1]).to(dtype)
    return idx, p, dw


@contextlib.contextmanager
def _momentum(convs: Sequence[SearchConvBN]) -> Iterator[None]:
    saved = [m.momentum for m in convs]
    try:
        yield
    finally:
        for m, mom in zip(convs, saved, strict=False):
            m.momentum = mom


@torch.no_grad()
def recalibrate_bn(model: SearchResNet, sample: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                   batches: Iterable[tuple[torch.Tensor, Any]]) -> None:
    """Re-estimate the BN running statistics that `sample` uses, from train-mode forwards of `batches`.

    Why: in TAS every conv keeps running statistics per candidate width, but the search accumulated them
    in train-mode forwards of the *mixed* network (K Gumbel-sampled widths per conv, interpolated and
    mixed; every stage's candidate depths mixed), on augmented images, in both the weight and the
    architecture steps. A candidate's statistics therefore describe its conv's output under inputs
    from a random mixture of upstream widths and depths, not under the one hard configuration being
    scored, and the search itself never used them (it always normalised with batch statistics). Scoring
    hard configurations with them measures that mismatch as much as the configuration, so each
    configuration's statistics are recomputed first (standard one-shot practice, e.g. SPOS, OFA).

    How: train-mode forwards without gradients; with momentum 1/(t+1) at batch t, the used candidates'
    running mean and (unbiased) variance end as the average over the batches of the batch statistics,
    and nothing from before survives for them. Only the chosen candidates' entries change (a
    `SearchConvBN` updates the rows of its sampled candidates), so the result does not depend on which
    configurations were scored before. The model is left in eval mode with its momenta restored.
    """
    convs = [m for m in model.modules() if isinstance(m, SearchConvBN)]
    model.train()
    with _momentum(convs):
        for t, (x, _) in enumerate(batches):
            for m in convs:
                m.momentum = 1.0 / (t + 1)
            model(x, sample)
    model.eval()


@torch.no_grad()
def score_configs(model: SearchResNet, configs: Sequence[Config], held: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  calibration: Sequence[tuple[torch.Tensor, Any]] = ()) -> list[float]:
    """Held-out top-1 accuracy of each configuration under the shared weights (eval mode, no grad).

    `held` is iterated once per configuration, a batch at a time (a loader or a list, not a generator).
    With `calibration` batches, each configuration's BN statistics are first recomputed on them
    (`recalibrate_bn`); without, the search's running statistics are used as they are.
    """
    correct = []
    seen = 0
    for widx, didx in configs:
        sample = one_hot_sample(model, widx, didx)
        if calibration:
            recalibrate_bn(model, sample, calibration)
        model.eval()
        hits = torch.zeros((), device=model.width_logits.device, dtype=torch.long)
        seen = 0
        for x, y in held:
            hits += (model(x, sample).argmax(1) == y).sum()
            seen += int(y.shape[0])
        correct.append(hits)
    if not correct:
        return []
    return (torch.stack(correct).double() / max(1, seen)).tolist()
