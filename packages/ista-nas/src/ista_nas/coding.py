"""The compressed architecture space of ISTA-NAS (sparse coding of a DARTS cell).

Node i of a cell (0-based, i = 0..steps-1) chooses among n_i = 7·(i+2) candidates, one per (input
state, op) pair, ordered input-major: candidate c = input·7 + op. Its sparse code z_i ∈ R^{n_i} has
exactly `sparsity` (2) non-zeros, read as the node's two (input, op) pairs (both may share an input).
The search works on the compressed code b_i = A_i z_i ∈ R^m (m = 7), with A_i an m × n_i matrix drawn
once from U[0, 1) and fixed. z is recovered from b by the LASSO (`lasso.lasso`) once per epoch; the
support S = the top-2 |z_i|; the two ops of S run with the weights

    w_S = z_S + A_Sᵀ (b − A z_S)          (no softmax: weights may be negative)

which are differentiable in b, so b is searched by gradient while z (and S) stay fixed for an epoch.

All nodes of both cell types are handled at once: K = 2·steps problems, the matrices zero-padded to
n_max = 7·(steps+1) columns with a mask of the real ones.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .lasso import LassoResult, lasso

#: The ISTA-NAS candidate ops: DARTS' ops without `none`, in DARTS' order.
ISTA_PRIMITIVES: tuple[str, ...] = (
    "max_pool_3x3", "avg_pool_3x3", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)
CELL_TYPES: tuple[str, str] = ("normal", "reduce")


class CompressedCode(nn.Module):
    """b (searched), A (fixed), z (recovered) and the support for every node of both cell types.

    Shapes: A (2, steps, m, n_max) buffer; mask (steps, n_max); b (2, steps, m) parameter;
    z (2, steps, n_max) buffer; support (2, steps, sparsity) long buffer (candidate indices).
    """

    def __init__(self, steps: int = 4, m: int = 7, sparsity: int = 2, n_ops: int = len(ISTA_PRIMITIVES),
                 b_init_std: float = 1e-3, seed: int = 0) -> None:
        super().__init__()
        if sparsity < 1 or sparsity > n_ops * 2:
            raise ValueError(f"sparsity must be in 1..{2 * n_ops}, got {sparsity}")
        self.steps, self.m, self.sparsity, self.n_ops = steps, m, sparsity, n_ops
        self.n = [n_ops * (i + 2) for i in range(steps)]
        n_max = self.n[-1]
        g = torch.Generator().manual_seed(seed)
        A = torch.rand(2, steps, m, n_max, generator=g, dtype=torch.float64)
        mask = torch.arange(n_max).unsqueeze(0) < torch.tensor(self.n).unsqueeze(1)  # (steps, n_max)
        self.register_buffer("A", (A * mask.unsqueeze(-2)).float())
        self.register_buffer("mask", mask)
        self.b = nn.Parameter(b_init_std * torch.randn(2, steps, m, generator=g))
        self.register_buffer("z", torch.zeros(2, steps, n_max))
        self.register_buffer("support", torch.zeros(2, steps, sparsity, dtype=torch.long))

    # ---- recovery ------------------------------------------------------------------------------
    def recover(self, gamma: float = 1e-5, warm_start: bool = True, **kw: object) -> tuple[torch.Tensor, LassoResult]:
        """Solve the LASSO for every node from the current b; returns (new z, solver result). Does not
        store it: call `set_code(z)` to adopt it (the one-stage search may keep some nodes' old z)."""
        K = 2 * self.steps
        A = self.A.reshape(K, self.m, -1)
        mask = self.mask.expand(2, -1, -1).reshape(K, -1)
        z0 = self.z.reshape(K, -1) if warm_start else None
        res = lasso(A, self.b.detach().reshape(K, self.m), gamma, mask=mask, z0=z0, **kw)
        return res.z.reshape(2, self.steps, -1).to(self.z.dtype), res

    def set_code(self, z: torch.Tensor) -> None:
        """Adopt sparse codes z (2, steps, n_max) and their top-`sparsity` support."""
        self.z.copy_(z)
        self.support.copy_(top_support(z, self.mask, self.sparsity))

    # ---- op weights ----------------------------------------------------------------------------
    def weights(self) -> torch.Tensor:
        """w_S = z_S + A_Sᵀ(b − A z_S), shape (2, steps, sparsity), differentiable in b."""
        return support_weights(self.A, self.b, self.z, self.support)

    def choices(self, weights: torch.Tensor | None = None, support: list | None = None
                ) -> tuple[list[list[tuple[int, int, torch.Tensor]]], list[list[tuple[int, int, torch.Tensor]]]]:
        """(normal, reduce) per-node lists of (input_index, op_index, weight) for the sparse supernet.

        `support` may be passed as a precomputed nested list (one host transfer per epoch, not per step).
        """
        w = self.weights() if weights is None else weights
        sup = self.support.tolist() if support is None else support
        rows = w.unbind(0)
        out = []
        for t in range(2):
            nodes = []
            wt = rows[t].unbind(0)
            for i in range(self.steps):
                wi = wt[i].unbind(0)
                nodes.append([(c // self.n_ops, c % self.n_ops, wi[s]) for s, c in enumerate(sup[t][i])])
            out.append(nodes)
        return out[0], out[1]

    def genotype_spec(self, steps_concat: Sequence[int] | None = None) -> dict[str, list]:
        """The DARTS genotype spec of the current support (see `genotype_from_support`)."""
        return genotype_from_support(self.support.tolist(), self.n_ops, steps_concat)


def top_support(z: torch.Tensor, mask: torch.Tensor, sparsity: int) -> torch.Tensor:
    """Indices of the `sparsity` largest |z| among the real candidates of each node, ascending."""
    score = z.abs().masked_fill(~mask.expand_as(z), -1.0)
    idx = score.topk(sparsity, dim=-1).indices
    return idx.sort(-1).values


def uniform_supports(mask: torch.Tensor, n: int, generator: torch.Generator, sparsity: int = 2,
                     max_rounds: int = 50) -> torch.Tensor:
    """Up to `n` distinct supports drawn from the uniform prior of the code space, shape (k, 2, steps, sparsity).

    Per node of each cell type, `sparsity` distinct candidates uniformly among its real ones (`mask`
    (steps, n_max), as `CompressedCode.mask`): the indices of the largest of iid U(0, 1) scores, so every
    subset is equally likely. Indices ascend per node (the format of `CompressedCode.support`, which
    `genotype_from_support` reads). Draws come in rounds of `n` from `generator` (on the CPU); duplicates
    are dropped, first draw kept, and after `max_rounds` rounds what was found is returned (k < n only
    when the space holds fewer than about n distinct supports).
    """
    mask = mask.detach().cpu().bool()
    steps, n_max = mask.shape
    if n <= 0:
        return torch.zeros(0, 2, steps, sparsity, dtype=torch.long)
    if int(mask.sum(-1).min()) < sparsity:
        raise ValueError(f"every node needs at least {sparsity} candidates, got {mask.sum(-1).tolist()}")
    seen: dict[tuple[int, ...], torch.Tensor] = {}
    for _ in range(max_rounds):
        u = torch.rand(n, 2, steps, n_max, generator=generator).masked_fill(~mask, -1.0)
        for row in u.topk(sparsity, dim=-1).indices.sort(-1).values:
            seen.setdefault(tuple(row.flatten().tolist()), row)
            if len(seen) == n:
                return torch.stack(list(seen.values()))
    return torch.stack(list(seen.values()))


def support_weights(A: torch.Tensor, b: torch.Tensor, z: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """w_S = z_S + A_Sᵀ(b − A_S z_S) for codes of any leading shape: A (..., m, n), b (..., m),
    z (..., n), support (..., s) -> (..., s). Gradients flow into b (and A, z if they require them)."""
    zs = z.gather(-1, support)  # (..., s)
    As = A.gather(-1, support.unsqueeze(-2).expand(*A.shape[:-1], support.shape[-1]))  # (..., m, s)
    r = b - (As @ zs.unsqueeze(-1)).squeeze(-1)  # (..., m)
    return zs + (As.transpose(-1, -2) @ r.unsqueeze(-1)).squeeze(-1)


def genotype_from_support(support: Sequence[Sequence[Sequence[int]]], n_ops: int = len(ISTA_PRIMITIVES),
                          concat: Sequence[int] | None = None) -> dict[str, list]:
    """A DARTS genotype spec from per-cell-type, per-node candidate indices: node i gets the pairs
    [op_name, input] of its support (input = c // n_ops, op = ISTA_PRIMITIVES[c % n_ops]), in candidate
    order; every node is concatenated (as in DARTS)."""
    spec: dict[str, list] = {}
    for t, name in enumerate(CELL_TYPES):
        steps = len(support[t])
        ops = []
        for i in range(steps):
            for c in support[t][i]:
                ops.append([ISTA_PRIMITIVES[int(c) % n_ops], int(c) // n_ops])
        spec[name] = ops
        spec[f"{name}_concat"] = list(concat) if concat is not None else list(range(2, steps + 2))
    return spec
