"""A batched LASSO solver (ISTA and FISTA) in torch: every node's sparse-coding problem at once.

ISTA-NAS recovers each node's sparse architecture code z from its compressed code b by

    min_z  ½‖A z − b‖² + γ‖z‖₁                 (γ = 1e-5 in the paper)

The official code calls CVXPY with the commercial MOSEK solver, one node at a time. Here the problems
of all nodes are stacked into one batch: node k has an m × n_k matrix, and the matrices are padded
with zero columns to a common n (a `mask` marks the real columns; padded entries of z stay exactly 0).
Both solvers use the step 1/L with L the largest eigenvalue of AᵀA (per node, from the m × m Gram
matrix A Aᵀ, which has the same non-zero spectrum), run on the device of the inputs, in float64 (the
problems are tiny and γ is small, so the extra precision is cheap and makes the optimality conditions
checkable), and stop when every node satisfies the optimality conditions to a tolerance relative to
γ, or after `max_iter` iterations. FISTA uses the adaptive restart of O'Donoghue & Candès (per node),
and every `check_every` iterations the current support is "polished" (the exact solution on that
support and sign pattern, accepted only if it passes the optimality test), which ends the slow tail
of proximal-gradient methods when γ is small.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Method = Literal["fista", "ista"]


@dataclass
class LassoResult:
    """The solution `z` (K, n) in the dtype of `b`, iterations run, and which nodes met the tolerance."""

    z: torch.Tensor
    iterations: int
    converged: torch.Tensor  # (K,) bool


def soft_threshold(x: torch.Tensor, thr: torch.Tensor | float) -> torch.Tensor:
    """The proximal map of thr·‖·‖₁: shrink every entry towards 0 by `thr`."""
    return x.sign() * (x.abs() - thr).clamp_min(0.0)


def lipschitz(A: torch.Tensor) -> torch.Tensor:
    """Largest eigenvalue of AᵀA for a batch of matrices A (K, m, n): the gradient's Lipschitz constant.

    Computed from the smaller m × m Gram matrix A Aᵀ (same non-zero eigenvalues); zero padding columns
    do not change it.
    """
    gram = A @ A.transpose(-1, -2)
    return torch.linalg.eigvalsh(gram)[..., -1]


def lasso_objective(A: torch.Tensor, b: torch.Tensor, z: torch.Tensor, gamma: float) -> torch.Tensor:
    """½‖A z − b‖² + γ‖z‖₁ per node, shape (K,)."""
    r = (A @ z.unsqueeze(-1)).squeeze(-1) - b
    return 0.5 * r.pow(2).sum(-1) + gamma * z.abs().sum(-1)


def lasso(A: torch.Tensor, b: torch.Tensor, gamma: float = 1e-5, *, mask: torch.Tensor | None = None,
          z0: torch.Tensor | None = None, method: Method = "fista", tol: float = 1e-3,
          max_iter: int = 20_000, check_every: int = 25, polish: bool = True) -> LassoResult:
    """Solve K LASSO problems min ½‖A_k z − b_k‖² + γ‖z‖₁ at once.

    Args:
        A: (K, m, n) measurement matrices (zero-padded to a common n), or (m, n) for one problem.
        b: (K, m) compressed codes, or (m,).
        gamma: the ℓ1 weight γ.
        mask: (K, n) bool, True for real columns; padded columns are forced to 0. Default: all real.
        z0: (K, n) warm start (e.g. the previous epoch's solution); default zeros.
        method: "fista" (accelerated, with adaptive restart) or "ista" (plain proximal gradient).
        tol: stop when every node's optimality residual (the largest violation of the LASSO
            conditions, see `kkt_violation`) is at most tol·γ.
        max_iter: iteration cap (the result then says which nodes did not converge).
        check_every: the tolerance is checked (one host sync) every this many iterations.
        polish: at each check, also try exact solutions on supports guessed from the iterate (see
            `_polish`; one small batched linear solve) and accept one where it satisfies the
            optimality conditions. ISTA/FISTA find the support quickly but then converge slowly when
            γ is small against b (nearly basis pursuit); the polish ends that tail. It never changes
            the answer, only when it is reached: a node is accepted only by the optimality test.
    """
    if method not in ("fista", "ista"):
        raise ValueError(f"method={method!r}: use 'fista' or 'ista'")
    single = A.dim() == 2
    if single:
        A, b = A.unsqueeze(0), b.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
        z0 = None if z0 is None else z0.unsqueeze(0)
    if A.dim() != 3 or b.shape != A.shape[:2]:
        raise ValueError(f"A must be (K, m, n) and b (K, m); got {tuple(A.shape)} and {tuple(b.shape)}")
    out_dtype = b.dtype
    A = A.detach().to(torch.float64)
    b = b.detach().to(torch.float64)
    K, m, n = A.shape
    keep = torch.ones(K, n, dtype=torch.float64, device=A.device) if mask is None else mask.to(A.device, torch.float64)
    A = A * keep.unsqueeze(1)
    step = 1.0 / lipschitz(A).clamp_min(1e-30)  # (K,)
    thr = (gamma * step).unsqueeze(-1)  # (K, 1)
    At = A.transpose(-1, -2)
    Atb = (At @ b.unsqueeze(-1)).squeeze(-1)  # (K, n)
    gram = At @ A  # (K, n, n): the gradient is gram z − Aᵀb
    z = (torch.zeros(K, n, dtype=torch.float64, device=A.device) if z0 is None
         else z0.detach().to(A.device, torch.float64) * keep)
    y = z.clone()
    t = torch.ones(K, 1, dtype=torch.float64, device=A.device)
    # one iteration is v = y − step·(gram y − Aᵀb) = M y + c, then soft thresholding at ±thr
    M = torch.eye(n, dtype=torch.float64, device=A.device) - step.view(K, 1, 1) * gram
    c = (step.unsqueeze(-1) * Atb).unsqueeze(-1)
    lo, hi = -thr, thr
    done = torch.zeros(K, 1, dtype=torch.bool, device=A.device)
    it = 0
    for it in range(1, max_iter + 1):
        v = torch.baddbmm(c, M, y.unsqueeze(-1)).squeeze(-1)
        z_new = v - v.clamp(lo, hi)  # soft threshold (padded entries stay 0: their rows of M are identity)
        if method == "fista":
            d = z_new - z
            # adaptive restart: drop the momentum of a node whose step went against its last move
            restart = ((y - z_new) * d).sum(-1, keepdim=True) > 0
            t_new = 0.5 + torch.sqrt(0.25 + t * t)
            beta = ((t - 1.0) / t_new).masked_fill(restart, 0.0)
            t = t_new.masked_fill(restart, 1.0)
            y = torch.addcmul(z_new, beta, d)
        else:
            y = z_new
        z = torch.where(done, z, z_new)
        if it % check_every == 0 or it == max_iter:
            if polish:
                zp, viol = _polish(gram, Atb, z, gamma, keep, max_support=min(m, n))
                newly = (viol <= tol * gamma).unsqueeze(-1) & ~done
                z = torch.where(newly, zp, z)
                y = torch.where(newly, zp, y)
            done = done | (_violation(gram, Atb, z, gamma, keep) <= tol * gamma).unsqueeze(-1)
            if bool(done.all()):
                break
    z = z.to(out_dtype)
    converged = done.squeeze(-1)
    if single:
        return LassoResult(z[0], it, converged[:1])
    return LassoResult(z, it, converged)


def _violation(gram: torch.Tensor, Atb: torch.Tensor, z: torch.Tensor, gamma: float, keep: torch.Tensor
               ) -> torch.Tensor:
    """Per node, the largest violation of the LASSO optimality conditions (see `kkt_violation`)."""
    g = (gram @ z.unsqueeze(-1)).squeeze(-1) - Atb
    viol = torch.where(z != 0, (g + gamma * z.sign()).abs(), (g.abs() - gamma).clamp_min(0.0)) * keep
    return viol.amax(-1)


def _polish(gram: torch.Tensor, Atb: torch.Tensor, z: torch.Tensor, gamma: float, keep: torch.Tensor,
            max_support: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Guess the exact LASSO solution from the iterate `z`; returns (guess, its optimality residual).

    On a fixed support S with signs s the LASSO is a linear system, A_SᵀA_S z_S = A_Sᵀb − γ s. The
    iterate's support is usually still too large long after its largest entries have settled, so the
    guesses are the supports of the k largest |z_j| for k = 1 … max_support (a LASSO solution in
    general position has at most m non-zeros) plus the iterate's own support, with the iterate's
    signs. All guesses of all nodes are solved in one batched call; the best one is returned, and
    the caller accepts it only if its residual passes the tolerance (so a wrong guess costs nothing).
    """
    K, n = z.shape
    ks = torch.arange(1, max_support + 1, device=z.device).view(1, -1, 1)

    def top_k_supports(score: torch.Tensor) -> torch.Tensor:  # (K, n) -> (K, max_support, n) bool
        ranks = torch.empty_like(score, dtype=torch.long)
        ranks.scatter_(-1, score.argsort(-1, descending=True), torch.arange(n, device=z.device).expand(K, n))
        return ranks.unsqueeze(1) < ks

    g = (gram @ z.unsqueeze(-1)).squeeze(-1) - Atb
    nz = z != 0
    # primal guesses (largest |z|, the iterate's signs) and dual guesses (largest |g|: at the solution
    # |g_j| = γ exactly on the support and ≤ γ elsewhere; signs −sign(g))
    primal = top_k_supports(z.abs()) & nz.unsqueeze(1)
    dual = top_k_supports(g.abs() * keep) & keep.bool().unsqueeze(1)
    cand = torch.cat([primal, nz.unsqueeze(1), dual], 1)  # (K, C, n)
    signs = torch.cat([z.sign().unsqueeze(1).expand_as(primal), z.sign().unsqueeze(1),
                       (-g.sign()).unsqueeze(1).expand_as(dual)], 1)
    on = cand.to(z.dtype)
    signs = signs * on
    system = gram.unsqueeze(1) * on.unsqueeze(-1) * on.unsqueeze(-2) + torch.diag_embed(1.0 - on)
    rhs = (Atb.unsqueeze(1) - gamma * signs) * on
    sol, info = torch.linalg.solve_ex(system, rhs.unsqueeze(-1))
    sol = sol.squeeze(-1) * on
    gs = (gram.unsqueeze(1) @ sol.unsqueeze(-1)).squeeze(-1) - Atb.unsqueeze(1)
    viol = torch.where(sol != 0, (gs + gamma * sol.sign()).abs(), (gs.abs() - gamma).clamp_min(0.0))
    viol = (viol * keep.unsqueeze(1)).amax(-1)  # (K, C)
    wrong_sign = ((sol * signs) < 0).any(-1)
    viol = torch.where((info != 0) | wrong_sign | ~torch.isfinite(viol), torch.full_like(viol, float("inf")), viol)
    best = viol.argmin(-1)  # (K,)
    pick = sol.gather(1, best.view(K, 1, 1).expand(K, 1, n)).squeeze(1)
    return pick, viol.gather(1, best.view(K, 1)).squeeze(1)


def kkt_violation(A: torch.Tensor, b: torch.Tensor, z: torch.Tensor, gamma: float,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """How far z is from the LASSO optimality conditions, per node (0 at the exact solution).

    With g = Aᵀ(A z − b): g_j = −γ·sign(z_j) where z_j ≠ 0, and |g_j| ≤ γ where z_j = 0. Returns the
    largest violation (absolute, in the units of g) over the real columns of each node.
    """
    A = A.to(torch.float64)
    z = z.to(torch.float64)
    g = (A.transpose(-1, -2) @ ((A @ z.unsqueeze(-1)).squeeze(-1) - b.to(torch.float64)).unsqueeze(-1)).squeeze(-1)
    on = z != 0
    viol = torch.where(on, (g + gamma * z.sign()).abs(), (g.abs() - gamma).clamp_min(0.0))
    if mask is not None:
        viol = viol * mask.to(viol.device, viol.dtype)
    return viol.amax(-1)
