"""The batched LASSO solver: exact recovery where the measurements allow it, optimality otherwise."""
from __future__ import annotations

import pytest
import torch

from ista_nas.lasso import kkt_violation, lasso, lasso_objective, lipschitz, soft_threshold

torch.set_num_threads(1)


def _paper_problems(seed: int = 0, m: int = 7, steps: int = 4, n_ops: int = 7, scale: float = 1e-2):
    """ISTA-NAS' problems: per node an m x 7(i+2) U[0,1) matrix, padded, and a random b."""
    g = torch.Generator().manual_seed(seed)
    n_max = n_ops * (steps + 1)
    ns = [n_ops * (i + 2) for i in range(steps)]
    A = torch.zeros(steps, m, n_max, dtype=torch.float64)
    mask = torch.zeros(steps, n_max, dtype=torch.bool)
    for i, n in enumerate(ns):
        A[i, :, :n] = torch.rand(m, n, generator=g, dtype=torch.float64)
        mask[i, :n] = True
    b = scale * torch.randn(steps, m, generator=g, dtype=torch.float64)
    return A, b, mask


def test_soft_threshold_and_lipschitz() -> None:
    x = torch.tensor([-3.0, -0.5, 0.0, 0.2, 2.0])
    torch.testing.assert_close(soft_threshold(x, 1.0), torch.tensor([-2.0, 0.0, 0.0, 0.0, 1.0]))
    A = torch.randn(3, 5, 9, dtype=torch.float64)
    ref = torch.linalg.eigvalsh(A.transpose(-1, -2) @ A)[..., -1]
    torch.testing.assert_close(lipschitz(A), ref)


@pytest.mark.parametrize("method", ["fista", "ista"])
def test_recovers_2_sparse_codes_exactly_when_m_allows(method: str) -> None:
    g = torch.Generator().manual_seed(1)
    K, m, n = 6, 30, 35
    A = torch.randn(K, m, n, generator=g, dtype=torch.float64) / m ** 0.5
    z = torch.zeros(K, n, dtype=torch.float64)
    for k in range(K):
        idx = torch.randperm(n, generator=g)[:2]
        z[k, idx] = torch.tensor([1.0, -0.7], dtype=torch.float64)
    b = (A @ z.unsqueeze(-1)).squeeze(-1)
    res = lasso(A, b, 1e-5, method=method, tol=1e-3, max_iter=20_000 if method == "fista" else 3_000)
    if method == "fista":
        assert bool(res.converged.all())
    # the code is recovered up to the l1 bias (of the order of gamma): same top-2 support, same values
    # (plain ISTA gets there too, only more slowly: a looser check after fewer iterations)
    torch.testing.assert_close(res.z, z, atol=1e-4 if method == "fista" else 1e-3, rtol=0)
    top2 = res.z.abs().topk(2, -1).indices.sort(-1).values
    assert torch.equal(top2, z.abs().topk(2, -1).indices.sort(-1).values)


@pytest.mark.parametrize("scale", [1e-3, 1e-2])
def test_paper_problems_satisfy_the_optimality_conditions(scale: float) -> None:
    A, b, mask = _paper_problems(scale=scale)
    gamma = 1e-5
    res = lasso(A, b, gamma, mask=mask, tol=1e-3)
    assert bool(res.converged.all())
    assert float(kkt_violation(A, b, res.z, gamma, mask).max()) <= 1e-3 * gamma
    assert not bool((res.z[~mask] != 0).any()), "padded candidates must stay zero"
    # optimality also means no small perturbation lowers the objective
    obj = lasso_objective(A, b, res.z, gamma)
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        dz = 1e-6 * torch.randn(res.z.shape, generator=g, dtype=res.z.dtype) * mask
        assert bool((lasso_objective(A, b, res.z + dz, gamma) >= obj - 1e-18).all())


def test_batched_equals_one_at_a_time_and_ignores_padding() -> None:
    A, b, mask = _paper_problems(seed=2, scale=1e-3)
    gamma = 1e-5
    batched = lasso(A, b, gamma, mask=mask, tol=1e-4)
    for i in range(A.shape[0]):
        n = int(mask[i].sum())
        alone = lasso(A[i, :, :n], b[i], gamma, tol=1e-4)
        torch.testing.assert_close(batched.z[i, :n], alone.z, atol=1e-9, rtol=1e-6)


def test_rejects_bad_shapes_and_methods() -> None:
    with pytest.raises(ValueError, match="method"):
        lasso(torch.ones(2, 3), torch.ones(2), method="admm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="A must be"):
        lasso(torch.ones(2, 3, 4), torch.ones(2, 4))
