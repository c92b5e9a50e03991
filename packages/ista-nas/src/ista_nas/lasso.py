"""Batched LASSO solvers in torch: every node's sparse-coding problem at once, on the device of b.

ISTA-NAS recovers each node's sparse architecture code z from its compressed code b by

    min_z  ½‖A z − b‖² + γ‖z‖₁                 (γ = 1e-5 in the paper)

The official code calls CVXPY with the commercial MOSEK solver, one node at a time. Here the problems
of all nodes are stacked into one batch: node k has an m × n_k matrix, and the matrices are padded
with zero columns to a common n (a `mask` marks the real columns; padded entries of z stay exactly 0).
Everything runs in float64 (the problems are tiny, and γ is small against b, so the optimality
conditions are only checkable with the extra precision).

`method="homotopy"` (the default, and what the search uses) is exact. ISTA-NAS' problems are tiny
(m 7, n ≤ 35) and γ is nearly zero against ‖b‖, so the LASSO is nearly basis pursuit: the solution has
about m non-zeros, and proximal-gradient methods (ISTA/FISTA) need a number of iterations that grows
like (‖b‖/γ)^0.6 to identify it, while b is an unbounded parameter that grows during the search. The
homotopy (LARS-lasso) follows the piecewise-linear solution path z(λ) from λ₀ = ‖Aᵀb‖∞, where z = 0,
down to λ = γ: between breakpoints the active set S and its signs s are fixed and
z_S(λ) = (A_SᵀA_S)⁻¹(A_Sᵀb − λ s); at a breakpoint one coordinate joins S (its correlation reaches ±λ)
or leaves it (it crosses zero). All nodes advance in lockstep, one breakpoint per batched step (one
masked n × n solve for all of them); a finished node stands still. Its cost does not depend on ‖b‖/γ
(about 2m breakpoints), and it has no tolerance to tune. At the end the solution is recomputed on the
final support and signs, and every node's optimality residual (`kkt_violation`) must be at most
`kkt_tol`·γ, or, where float64 cannot resolve that (large b), a few units of round-off of the terms that
make up the gradient. A node that fails (a path that does not finish within its bound, a singular
active set, a wrong sign, a residual above the tolerance) raises `LassoError`: nothing returns an
unconverged solution.

`method="fista"` / `"ista"`: proximal gradient (step 1/L, L the largest eigenvalue of AᵀA from the
m × m Gram matrix A Aᵀ), FISTA with the adaptive restart of O'Donoghue & Candès, stopping when every
node satisfies the optimality conditions to `tol`·γ or after `max_iter` iterations, with an exact
"polish" on supports guessed from the iterate every `check_every` iterations. Kept for comparison
(benchmarks); they may stop unconverged, which `LassoResult.converged` reports.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from nas_common.errors import NASError

Method = Literal["homotopy", "fista", "ista"]
METHODS: tuple[str, ...] = ("homotopy", "fista", "ista")

_EPS = torch.finfo(torch.float64).eps


class LassoError(NASError, RuntimeError):
    """The exact LASSO solve failed for some node; no unconverged solution is ever returned."""


@dataclass
class LassoResult:
    """The solution `z` (K, n) in the dtype of `b`, iterations (breakpoints) run, which nodes met the
    tolerance, and each node's optimality residual (`kkt_violation`, in the units of the gradient)."""

    z: torch.Tensor
    iterations: int
    converged: torch.Tensor  # (K,) bool
    kkt: torch.Tensor | None = None  # (K,) float64


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
          method: Method = "homotopy", kkt_tol: float = 1e-9, z0: torch.Tensor | None = None,
          tol: float = 1e-3, max_iter: int = 20_000, check_every: int = 25, polish: bool = True
          ) -> LassoResult:
    """Solve K LASSO problems min ½‖A_k z − b_k‖² + γ‖z‖₁ at once.

    Args:
        A: (K, m, n) measurement matrices (zero-padded to a common n), or (m, n) for one problem.
        b: (K, m) compressed codes, or (m,).
        gamma: the ℓ1 weight γ (> 0).
        mask: (K, n) bool, True for real columns; padded columns are forced to 0. Default: all real.
        method: "homotopy" (exact, see the module docstring), or "fista"/"ista" (iterative).
        kkt_tol: homotopy: the optimality residual every node must meet, relative to γ (else
            `LassoError`); a floor of a few float64 round-offs of the gradient's terms applies.
        z0, tol, max_iter, check_every, polish: the iterative methods only: warm start; stop when every
            node's residual is at most tol·γ or after max_iter iterations (the result then says which
            nodes did not converge); check (one host sync) every check_every iterations; try exact
            solutions on supports guessed from the iterate at each check (accepted only when they pass
            the optimality test, so it changes when the answer is reached, never the answer).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: use one of {', '.join(METHODS)}")
    if not gamma > 0:
        raise ValueError(f"gamma={gamma!r} must be > 0")
    single = A.dim() == 2
    if single:
        A, b = A.unsqueeze(0), b.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
        z0 = None if z0 is None else z0.unsqueeze(0)
    if A.dim() != 3 or b.shape != A.shape[:2]:
        raise ValueError(f"A must be (K, m, n) and b (K, m); got {tuple(A.shape)} and {tuple(b.shape)}")
    out_dtype = b.dtype
    A = A.detach().to(torch.float64)
    b = b.detach().to(A.device, torch.float64)
    K, m, n = A.shape
    keep = (torch.ones(K, n, dtype=torch.bool, device=A.device) if mask is None
            else mask.to(A.device, torch.bool).expand(K, n))
    A = A * keep.unsqueeze(1)
    finite = torch.isfinite(b).all(-1) & torch.isfinite(A).flatten(1).all(-1)
    if not bool(finite.all()):
        raise LassoError(f"the LASSO input of node(s) {(~finite).nonzero().flatten().tolist()} is not finite (NaN or "
                         f"inf in b or A): the search diverged; resume from an earlier checkpoint with a lower lr")
    if method == "homotopy":
        res = _homotopy(A, b, gamma, keep, kkt_tol)
    else:
        res = _proximal(A, b, gamma, keep.to(torch.float64), z0, method, tol, max_iter, check_every, polish)
    res.z = res.z.to(out_dtype)
    if single:
        res.z, res.converged = res.z[0], res.converged[:1]
        res.kkt = None if res.kkt is None else res.kkt[:1]
    return res


# ---- the exact solver: a batched homotopy (LARS-lasso) path --------------------------------------------------
def _solve_on(gram: torch.Tensor, on: torch.Tensor, rhs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve gram_SS x_S = rhs_S per node for the set S = `on` (K, n, float 0/1); x is 0 off S.

    The masked system (gram_SS on S, the identity elsewhere) is symmetric positive definite exactly when
    the active columns of A are independent, so a batched Cholesky solves it (2x cheaper than an LU here)
    and its info is non-zero where the active set is singular (returned).
    """
    system = gram * (on.unsqueeze(-1) * on.unsqueeze(-2)) + torch.diag_embed(1.0 - on)
    chol, info = torch.linalg.cholesky_ex(system)
    x = torch.cholesky_solve((rhs * on).unsqueeze(-1), chol)
    return x.squeeze(-1) * on, info


def _homotopy(A: torch.Tensor, b: torch.Tensor, gamma: float, keep: torch.Tensor, kkt_tol: float) -> LassoResult:
    """The lockstep homotopy of all K nodes (see the module docstring); raises LassoError on failure."""
    K, m, n = A.shape
    dev, f64 = A.device, torch.float64
    At = A.transpose(-1, -2)
    gram = At @ A  # (K, n, n)
    atb = (At @ b.unsqueeze(-1)).squeeze(-1)  # (K, n): the correlations Aᵀ(b − A z) at z = 0
    real = keep.to(f64)
    inf = torch.full((), float("inf"), dtype=f64, device=dev)
    cols = torch.arange(n, device=dev)
    sig = torch.tensor([1.0, -1.0], dtype=f64, device=dev).view(1, 2, 1)  # a join at +λ, at −λ
    join_sign = torch.tensor([1.0, -1.0, 0.0], dtype=f64, device=dev)  # per candidate block of `cand`
    # start: λ₀ = ‖Aᵀb‖∞ with z = 0, and the largest correlation joins; a node with λ₀ ≤ γ has z = 0
    lam, first = atb.abs().masked_fill(~keep, -1.0).max(-1)
    done = lam <= gamma
    active = ((cols == first.unsqueeze(-1)) & ~done.unsqueeze(-1)).to(f64)  # 0/1 masks are floats
    signs = active * atb.sign()
    z = torch.zeros(K, n, dtype=f64, device=dev)
    corr = atb.clone()
    lam = lam.unsqueeze(-1)  # (K, 1)
    done_f = done.to(f64).unsqueeze(-1)  # (K, 1)
    singular = torch.zeros(K, dtype=torch.bool, device=dev)
    # a path has finitely many breakpoints (one sign pattern each); these problems take about 2m. The
    # bound only turns a path that cannot end into an error: it never stops one silently.
    bound = 8 * n + 64
    steps = 0
    while True:
        if steps % 4 == 0 and bool(done_f.all()):  # one host sync per 4 breakpoints (once per epoch in a search)
            break
        if steps >= bound:
            left = (done_f.squeeze(-1) == 0).nonzero().flatten().tolist()
            raise LassoError(f"the LASSO homotopy did not reach gamma={gamma:g} within {bound} breakpoints on "
                             f"node(s) {left}: the measurement matrices are degenerate (not in general position)")
        steps += 1
        d, info = _solve_on(gram, active, signs)  # dz/d(−λ) on S
        singular |= info != 0  # (the node stops: it is reported below)
        a = (gram @ d.unsqueeze(-1)).squeeze(-1)  # d corr/d(−λ): the signs on S
        # a coordinate off S joins when its correlation reaches ±λ: corr − t·a = ±(λ − t)
        den = 1.0 - sig * a.unsqueeze(1)  # (K, 2, n)
        ok = (real - active).unsqueeze(1) * (den > 1e-12)
        t_join = torch.where(ok > 0, (lam.unsqueeze(-1) - sig * corr.unsqueeze(1)) / den, inf)
        # a coordinate on S leaves it when it crosses zero: z + t·d = 0
        t_drop = torch.where(z * d < 0, -z / d, inf)
        cand = torch.cat([t_join.flatten(1), t_drop], -1)  # (K, 3n): +λ joins, −λ joins, drops
        t_event, which = torch.where(cand > 1e-12 * lam, cand, inf).min(-1, keepdim=True)
        t_end = lam - gamma
        finish = (t_end <= t_event).to(f64) * (1.0 - done_f)  # (K, 1)
        t = torch.minimum(t_event, t_end) * (1.0 - done_f)
        z = torch.addcmul(z, t, d)
        corr = torch.addcmul(corr, t, a, value=-1.0)
        lam = lam - t
        moving = 1.0 - finish - done_f  # nodes with an event this step
        hit = (cols == which % n).to(f64) * moving  # the coordinate that joins or leaves
        block = torch.div(which, n, rounding_mode="floor")
        sign_new = join_sign[block]  # +1, −1 for joins, 0 for a drop
        joins = hit * sign_new.abs()
        signs = signs * (1.0 - hit) + hit * sign_new
        active = active + joins - (hit - joins)
        z = z * (1.0 - hit + joins)
        done_f = torch.maximum(torch.maximum(done_f, finish), singular.to(f64).unsqueeze(-1))
    if bool(singular.any()):
        raise LassoError(f"the LASSO homotopy met a singular active set on node(s) "
                         f"{singular.nonzero().flatten().tolist()}: the measurement matrices are not in general "
                         f"position")
    # the exact solution on the final support and signs (removes the round-off the path accumulated)
    z, info = _solve_on(gram, active, atb - gamma * signs)
    kkt = _violation(gram, atb, z, gamma, real)
    # what float64 can resolve: a few round-offs of the terms of the gradient g = gram·z − Aᵀb
    floor = 64 * _EPS * ((gram.abs() @ z.abs().unsqueeze(-1)).squeeze(-1) + atb.abs()).amax(-1)
    limit = torch.maximum(torch.full_like(kkt, kkt_tol * gamma), floor)
    bad = (info != 0) | ((z * signs) < 0).any(-1) | ((active > 0) & (z == 0)).any(-1) | ~(kkt <= limit)
    if bool(bad.any()):
        nodes = bad.nonzero().flatten().tolist()
        raise LassoError(f"the exact LASSO solve failed on node(s) {nodes} (optimality residual "
                         f"{[f'{float(v):.3g}' for v in kkt[bad]]}, allowed {kkt_tol:g}*gamma): the recovered "
                         f"support would be wrong, so the search stops; please report it with the run directory")
    return LassoResult(z, steps, torch.ones(K, dtype=torch.bool, device=dev), kkt)


# ---- the iterative solvers (comparison) --------------------------------------------------------------------
def _proximal(A: torch.Tensor, b: torch.Tensor, gamma: float, keep: torch.Tensor, z0: torch.Tensor | None,
              method: str, tol: float, max_iter: int, check_every: int, polish: bool) -> LassoResult:
    """ISTA or FISTA (adaptive restart) on K problems at once, with the support polish; see `lasso`."""
    K, m, n = A.shape
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
    converged = done.squeeze(-1)
    return LassoResult(z, it, converged, _violation(gram, Atb, z, gamma, keep))


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
