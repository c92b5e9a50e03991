"""The batched LASSO solvers: the exact homotopy against independent references, and the iterative ones."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ista_nas.lasso import LassoError, kkt_violation, lasso, lasso_objective, lipschitz, soft_threshold

torch.set_num_threads(1)

GAMMA = 1e-5
SCALES = [1e-3, 1e-2, 1e-1, 1.0, 10.0]


def _paper_problems(seed: int = 0, m: int = 7, steps: int = 4, n_ops: int = 7, scale: float = 1e-2,
                    types: int = 1):
    """ISTA-NAS' problems: per node an m x 7(i+2) U[0,1) matrix, zero-padded, and b ~ scale * N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    n_max = n_ops * (steps + 1)
    ns = [n_ops * (i + 2) for i in range(steps)] * types
    A = torch.zeros(len(ns), m, n_max, dtype=torch.float64)
    mask = torch.zeros(len(ns), n_max, dtype=torch.bool)
    for i, n in enumerate(ns):
        A[i, :, :n] = torch.rand(m, n, generator=g, dtype=torch.float64)
        mask[i, :n] = True
    b = scale * torch.randn(len(ns), m, generator=g, dtype=torch.float64)
    return A, b, mask


def _enumerate_lasso(A: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    """The LASSO solution by brute force: every support S (|S| <= m) and sign pattern s, the stationary
    point z_S = (A_S'A_S)^-1 (A_S'b - gamma s), kept if its signs are s and |A_j'(b - A z)| <= gamma off S.
    For A in general position exactly one pattern passes (the solution is unique)."""
    m, n = A.shape
    found = []
    for k in range(m + 1):
        for S in itertools.combinations(range(n), k):
            AS = A[:, S]
            for s in itertools.product((1.0, -1.0), repeat=k):
                s = np.array(s)
                zS = np.linalg.solve(AS.T @ AS, AS.T @ b - gamma * s) if k else np.zeros(0)
                if k and np.any(np.sign(zS) != s):
                    continue
                z = np.zeros(n)
                z[list(S)] = zS
                corr = A.T @ (b - A @ z)
                off = np.ones(n, bool)
                off[list(S)] = False
                if np.all(np.abs(corr[off]) <= gamma * (1 + 1e-9)):
                    found.append(z)
    assert len(found) == 1, f"{len(found)} sign patterns pass: not in general position"
    return found[0]


def _kkt_numpy(A: np.ndarray, b: np.ndarray, z: np.ndarray, gamma: float) -> float:
    """The optimality residual, written independently of the package: g = A'(Az - b) must equal
    -gamma sign(z) on the support and lie in [-gamma, gamma] elsewhere."""
    g = A.T @ (A @ z - b)
    on = z != 0
    return float(max(np.abs(g[on] + gamma * np.sign(z[on])).max(initial=0.0),
                     (np.abs(g[~on]) - gamma).clip(min=0).max(initial=0.0)))


def test_soft_threshold_and_lipschitz() -> None:
    x = torch.tensor([-3.0, -0.5, 0.0, 0.2, 2.0])
    torch.testing.assert_close(soft_threshold(x, 1.0), torch.tensor([-2.0, 0.0, 0.0, 0.0, 1.0]))
    A = torch.randn(3, 5, 9, dtype=torch.float64)
    ref = torch.linalg.eigvalsh(A.transpose(-1, -2) @ A)[..., -1]
    torch.testing.assert_close(lipschitz(A), ref)


# ---- the exact homotopy ---------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", SCALES)
def test_homotopy_equals_brute_force_enumeration(scale: float) -> None:
    """Small problems (m 3, n 5..8, U[0,1) as the paper's), 12 random b per scale, batched with padding."""
    g = torch.Generator().manual_seed(int(scale * 1000) + 7)
    ns = [5, 6, 7, 8] * 3
    A = torch.zeros(len(ns), 3, 8, dtype=torch.float64)
    mask = torch.zeros(len(ns), 8, dtype=torch.bool)
    for k, n in enumerate(ns):
        A[k, :, :n] = torch.rand(3, n, generator=g, dtype=torch.float64)
        mask[k, :n] = True
    b = scale * torch.randn(len(ns), 3, generator=g, dtype=torch.float64)
    res = lasso(A, b, GAMMA, mask=mask)
    assert bool(res.converged.all())
    for k, n in enumerate(ns):
        ref = _enumerate_lasso(A[k, :, :n].numpy(), b[k].numpy(), GAMMA)
        np.testing.assert_allclose(res.z[k, :n].numpy(), ref, rtol=1e-9, atol=1e-12 * max(scale, 1.0))
        assert not bool(res.z[k, n:].any()), "padded candidates must stay zero"


@pytest.mark.parametrize("scale", SCALES)
def test_homotopy_is_optimal_on_the_paper_problems(scale: float) -> None:
    """Paper-size problems (m 7, n 14..35, 8 nodes per batch, 5 batches = 40 random b per scale): the
    independent optimality residual is at most 1e-9 gamma where float64 can resolve it (b up to ~1), and
    a few round-offs of the gradient's terms beyond; at most m non-zeros, exactly m once b is large
    against gamma (nearly basis pursuit); no small perturbation lowers the objective."""
    for seed in range(5):
        A, b, mask = _paper_problems(seed=seed, scale=scale, types=2)
        res = lasso(A, b, GAMMA, mask=mask)
        for k in range(A.shape[0]):
            n = int(mask[k].sum())
            An, bn, zn = A[k, :, :n].numpy(), b[k].numpy(), res.z[k, :n].numpy()
            kkt = _kkt_numpy(An, bn, zn, GAMMA)
            terms = np.abs(An.T @ An) @ np.abs(zn) + np.abs(An.T @ bn)
            assert kkt <= max(1e-9 * GAMMA, 64 * np.finfo(float).eps * terms.max()), (scale, k, kkt)
            assert int((zn != 0).sum()) <= 7 and (scale < 0.1 or int((zn != 0).sum()) == 7)
            if scale <= 1.0:
                assert kkt <= 1e-9 * GAMMA, (scale, k, kkt)
        obj = lasso_objective(A, b, res.z, GAMMA)
        g = torch.Generator().manual_seed(seed)
        for _ in range(3):
            dz = 1e-7 * scale * torch.randn(res.z.shape, generator=g, dtype=res.z.dtype) * mask
            assert bool((lasso_objective(A, b, res.z + dz, GAMMA) >= obj - 1e-15 * (1 + obj)).all())


def test_homotopy_agrees_with_converged_fista_and_under_symmetries() -> None:
    A, b, mask = _paper_problems(seed=3, scale=1e-3, types=2)
    exact = lasso(A, b, GAMMA, mask=mask)
    fista = lasso(A, b, GAMMA, mask=mask, method="fista", tol=1e-6)
    assert bool(fista.converged.all())
    torch.testing.assert_close(exact.z, fista.z, atol=1e-12, rtol=1e-6)
    # the LASSO is equivariant: (b, gamma) -> (c b, c gamma) gives c z; permuted columns, permuted z
    scaled = lasso(A, 10.0 * b, 10.0 * GAMMA, mask=mask)
    torch.testing.assert_close(scaled.z, 10.0 * exact.z, atol=1e-12, rtol=1e-9)
    perm = torch.randperm(14, generator=torch.Generator().manual_seed(0))
    k = 0  # a node with 14 real candidates
    alone = lasso(A[k, :, :14][:, perm], b[k], GAMMA)
    torch.testing.assert_close(alone.z, exact.z[k, :14][perm], atol=1e-13, rtol=1e-9)


def test_homotopy_top2_differs_from_an_unconverged_fista() -> None:
    """The failure it replaces: at b ~ N(0, 1) FISTA stopped at its iteration cap leaves nodes whose
    top-2 |z| is not the LASSO's (the search used to adopt them)."""
    A, b, mask = _paper_problems(seed=0, scale=1.0, types=2)
    exact = lasso(A, b, GAMMA, mask=mask)
    fista = lasso(A, b, GAMMA, mask=mask, method="fista", tol=1e-2, max_iter=1000)
    top = lambda z: z.abs().masked_fill(~mask, -1).topk(2, -1).indices.sort(-1).values  # noqa: E731
    assert not bool(fista.converged.all())
    assert bool((fista.kkt[~fista.converged] > 1e-2 * GAMMA).all())
    assert float(exact.kkt.max()) <= 1e-9 * GAMMA
    assert not torch.equal(top(fista.z), top(exact.z))


def test_trivial_and_single_problems() -> None:
    A, b, mask = _paper_problems(seed=1, scale=1.0)
    b[1] = 0.0  # lambda_0 = 0 <= gamma: z = 0
    b[2] = 1e-7  # lambda_0 < gamma too
    res = lasso(A, b, GAMMA, mask=mask)
    assert not bool(res.z[1].any()) and not bool(res.z[2].any())
    one = lasso(A[3, :, :35], b[3], GAMMA)
    assert one.z.shape == (35,)
    torch.testing.assert_close(one.z, res.z[3], atol=1e-13, rtol=1e-9)
    assert lasso(A.float(), b.float(), GAMMA, mask=mask).z.dtype == torch.float32  # returns b's dtype


def test_failures_raise_a_clear_error() -> None:
    A, b, mask = _paper_problems(seed=1, scale=1.0)
    b[2, 3] = float("nan")
    with pytest.raises(LassoError, match=r"node\(s\) \[2\] is not finite"):
        lasso(A, b, GAMMA, mask=mask)
    # a rank-deficient problem (all candidates the same column): the active set turns singular or the
    # path cannot certify a unique solution; either way an error, never a silently wrong z
    col = torch.rand(7, 1, dtype=torch.float64)
    A2 = torch.cat([col, col, 2 * col, col + 1e-300], 1).unsqueeze(0)
    b2 = torch.randn(1, 7, dtype=torch.float64)
    try:
        res = lasso(A2, b2, GAMMA)
    except LassoError as e:
        assert "node(s) [0]" in str(e)
    else:  # if it does return, the result must be optimal
        assert float(kkt_violation(A2, b2, res.z, GAMMA).max()) <= 1e-9 * GAMMA + 1e-12


# ---- the iterative solvers (kept for comparison) ------------------------------------------------------------
@pytest.mark.parametrize("method", ["fista", "ista"])
def test_iterative_recovers_2_sparse_codes_exactly_when_m_allows(method: str) -> None:
    g = torch.Generator().manual_seed(1)
    K, m, n = 6, 30, 35
    A = torch.randn(K, m, n, generator=g, dtype=torch.float64) / m ** 0.5
    z = torch.zeros(K, n, dtype=torch.float64)
    for k in range(K):
        idx = torch.randperm(n, generator=g)[:2]
        z[k, idx] = torch.tensor([1.0, -0.7], dtype=torch.float64)
    b = (A @ z.unsqueeze(-1)).squeeze(-1)
    res = lasso(A, b, GAMMA, method=method, tol=1e-3, max_iter=20_000 if method == "fista" else 3_000)
    if method == "fista":
        assert bool(res.converged.all())
    torch.testing.assert_close(res.z, z, atol=1e-4 if method == "fista" else 1e-3, rtol=0)
    exact = lasso(A, b, GAMMA)  # the homotopy also handles m > 2 sparse codes
    torch.testing.assert_close(exact.z, z, atol=1e-4, rtol=0)


def test_batched_equals_one_at_a_time_and_ignores_padding() -> None:
    A, b, mask = _paper_problems(seed=2, scale=1e-3)
    for method in ("homotopy", "fista"):
        batched = lasso(A, b, GAMMA, mask=mask, method=method, tol=1e-4)
        for i in range(A.shape[0]):
            n = int(mask[i].sum())
            alone = lasso(A[i, :, :n], b[i], GAMMA, method=method, tol=1e-4)
            torch.testing.assert_close(batched.z[i, :n], alone.z, atol=1e-9, rtol=1e-6)


def test_rejects_bad_shapes_and_methods() -> None:
    with pytest.raises(ValueError, match="method"):
        lasso(torch.ones(2, 3), torch.ones(2), method="admm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="A must be"):
        lasso(torch.ones(2, 3, 4), torch.ones(2, 4))
    with pytest.raises(ValueError, match="gamma"):
        lasso(torch.ones(2, 3), torch.ones(2), gamma=0.0)
