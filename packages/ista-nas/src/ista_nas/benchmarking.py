"""The two search steps every ISTA-NAS speed comparison times: the sparse step (a b step through the
selected ops, then a weight step) and the dense DARTS step of the same space (an α step, then a weight
step), built here once so that the package's bench_ista and the harness's GPU run time the same work.

Both follow the search's update order and hyperparameters (b and α: Adam 6e-4, betas (0.5, 0.999),
weight decay 1e-3; weights: SGD with the caller's optimizer, gradient norm clipped at 5 as the official
search does). Each builder returns `(step, forward)`: `step()` runs one search step, `forward()` the
loss of the step's first forward (for memory and FLOP counts)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .coding import CompressedCode

__all__ = ["dense_search_step", "sparse_search_step"]

Step = tuple[Callable[[], None], Callable[[], torch.Tensor]]
GRAD_CLIP = 5.0


def _arch_optimizer(p: torch.Tensor) -> torch.optim.Optimizer:
    return torch.optim.Adam([p], lr=6e-4, betas=(0.5, 0.999), weight_decay=1e-3)


def sparse_search_step(sparse: nn.Module, code: CompressedCode, w_opt: torch.optim.Optimizer, x: torch.Tensor,
                       y: torch.Tensor, support: Sequence | None = None) -> Step:
    """One ISTA-NAS search step of `sparse` (a `search_supernet`) at `code`'s selection (`support`, read
    from the code once here when None, so that the step itself never reads the device)."""
    support = code.support.tolist() if support is None else support
    b_opt = _arch_optimizer(code.b)

    def forward() -> torch.Tensor:
        return F.cross_entropy(sparse.forward_sparse(x, *code.choices(support=support)), y)

    def step() -> None:
        loss_b = forward()
        b_opt.zero_grad(set_to_none=True)
        (code.b.grad,) = torch.autograd.grad(loss_b, [code.b])
        b_opt.step()
        with torch.no_grad():
            w = code.weights()
        loss = F.cross_entropy(sparse.forward_sparse(x, *code.choices(w, support)), y)
        w_opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(sparse.parameters(), GRAD_CLIP)
        w_opt.step()

    return step, forward


def dense_search_step(dense: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> Step:
    """One DARTS (first-order) search step of `dense` (a `nas_common` DartsSupernet): softmax α over every
    op of every edge, α initialised as DARTS does (1e-3 · N(0, 1), from `seed`)."""
    gen = torch.Generator().manual_seed(seed)
    init = 1e-3 * torch.randn(2, dense.n_edges, dense.n_ops, generator=gen)
    alpha = nn.Parameter(init.to(x.device))
    w_opt = torch.optim.SGD(dense.parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    a_opt = _arch_optimizer(alpha)

    def forward() -> torch.Tensor:
        wn, wr = F.softmax(alpha, -1).unbind(0)
        return F.cross_entropy(dense(x, wn, wr), y)

    def step() -> None:
        loss_a = forward()
        a_opt.zero_grad(set_to_none=True)
        (alpha.grad,) = torch.autograd.grad(loss_a, [alpha])
        a_opt.step()
        wn, wr = F.softmax(alpha.detach(), -1).unbind(0)
        loss = F.cross_entropy(dense(x, wn, wr), y)
        w_opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(dense.parameters(), GRAD_CLIP)
        w_opt.step()

    return step, forward
