"""Lanczos, Hutchinson and rank correlation against float64 brute force and hand references."""

from __future__ import annotations

import math

import pytest
import torch
from measure_testing import flat_hessian, flatten, normed_mlp

from pipeline.measure import (
    gradient_curvature_correlation,
    hutchinson_diagonal,
    hutchinson_diagonal_with_error,
    rank_correlation,
    top_hessian_eigenvalue,
)


def quadratic(eigenvalues, seed=0):
    """(loss_fn, params, hessian) of 0.5 x^T A x with A = Q diag(eigenvalues) Q^T, float64."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=gen,
                                       dtype=torch.float64))
    a = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    x = torch.randn(len(eigenvalues), dtype=torch.float64, generator=gen)
    return (lambda p: 0.5 * p["x"] @ a @ p["x"]), {"x": x}, a


def test_lanczos_matches_eigvalsh_of_brute_force_hessian():
    loss_fn, params = normed_mlp()
    expected = float(torch.linalg.eigvalsh(flat_hessian(loss_fn, params))[-1])
    result = top_hessian_eigenvalue(loss_fn, params, iters=60, tol=1e-9,
                                    generator=torch.Generator().manual_seed(0))
    assert result.converged and result.residual <= 1e-9 and result.tol == 1e-9
    assert result.iters < 60  # stopped on the tolerance, not on the budget
    assert result.value == pytest.approx(expected, rel=1e-9)


def test_lanczos_returns_the_largest_algebraic_eigenvalue():
    # The largest magnitude is -10: power iteration would find it; the top eigenvalue is 2.
    loss_fn, params, _ = quadratic([-10.0, -3.0, 0.5, 1.0, 2.0])
    result = top_hessian_eigenvalue(loss_fn, params, iters=10, tol=1e-10)
    assert result.converged and result.value == pytest.approx(2.0, rel=1e-10)


def test_lanczos_reports_non_convergence():
    loss_fn, params, a = quadratic([float(k) for k in range(1, 41)], seed=1)
    result = top_hessian_eigenvalue(loss_fn, params, iters=3, tol=1e-8,
                                    generator=torch.Generator().manual_seed(2))
    assert not result.converged and result.iters == 3 and result.residual > 1e-8
    assert result.value < 40.0  # a Ritz value never exceeds the top eigenvalue


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    weights = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    params = {"x": torch.tensor([0.5, 1.0, -2.0], dtype=torch.float64), "y": torch.ones(2, 2)}

    def loss_fn(p):  # separable: H = diag(12 w x^2) and diag(2)
        return (weights * p["x"] ** 4).sum() + p["y"].pow(2).sum()

    mean, stderr = hutchinson_diagonal_with_error(loss_fn, params, samples=3)
    assert torch.allclose(mean["x"], 12 * weights * params["x"] ** 2, rtol=1e-12)
    assert torch.allclose(mean["y"], torch.full((2, 2), 2.0))
    assert float(stderr["x"].abs().max()) == 0.0


def test_hutchinson_within_its_statistical_error():
    loss_fn, params = normed_mlp()
    hessian = flat_hessian(loss_fn, params)
    samples = 64
    mean, stderr = hutchinson_diagonal_with_error(loss_fn, params, samples=samples,
                                                  generator=torch.Generator().manual_seed(3))
    # Var of one sample z_i (Hz)_i is sum_{j != i} H_ij^2 (Rademacher z).
    exact_sd = ((hessian.pow(2).sum(1) - hessian.diag().pow(2)) / samples).sqrt()
    # LayerNorm's bias before the training-mode BatchNorm has a zero Hessian row: float64 noise.
    exact_sd = exact_sd + 1e-12 * float(hessian.abs().max())
    z = (flatten(mean) - hessian.diag()) / exact_sd
    assert float(z.abs().max()) < 5.0
    assert 0.5 < float(z.pow(2).mean()) < 1.6  # chi-square / n near 1
    assert 0.7 < float((flatten(stderr) / exact_sd).median()) < 1.3  # the stated error is right
    estimate = hutchinson_diagonal(loss_fn, params, samples=samples,
                                   generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(estimate[n], mean[n]) for n in params)


@pytest.mark.parametrize("method", ["forward_over_reverse", "double_backward"])
def test_hutchinson_draws_do_not_depend_on_chunking(method):
    loss_fn, params = normed_mlp(seed=1)
    whole = hutchinson_diagonal(loss_fn, params, samples=6, method="forward_over_reverse",
                                generator=torch.Generator().manual_seed(4))
    chunked = hutchinson_diagonal(loss_fn, params, samples=6, chunk_size=4, method=method,
                                  generator=torch.Generator().manual_seed(4))
    assert all(torch.allclose(whole[n], chunked[n], rtol=1e-12, atol=1e-14) for n in params)


def spearman_reference(a, b):
    """Pure-Python Spearman: average ranks by counting, then Pearson."""
    def ranks(x):
        return [sum(y < v for y in x) + (sum(y == v for y in x) + 1) / 2 for v in x]

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((p - ma) * (q - mb) for p, q in zip(ra, rb))
    return cov / math.sqrt(sum((p - ma) ** 2 for p in ra) * sum((q - mb) ** 2 for q in rb))


def test_rank_correlation_by_hand_and_against_reference():
    # ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4): 4.5 / sqrt(4.5 * 5)
    a, b = torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0, 4.0])
    by_hand = rank_correlation(a, b)
    assert by_hand == pytest.approx(4.5 / math.sqrt(22.5))
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):  # small integer ranges: many ties
        a = torch.randint(0, 6, (30,), generator=gen).double()
        b = (a + torch.randint(-3, 4, (30,), generator=gen)).double()
        assert rank_correlation(a, b) == pytest.approx(spearman_reference(a.tolist(), b.tolist()),
                                                       rel=1e-12)
    x = torch.randn(50, generator=gen)
    assert rank_correlation(x, x.exp()) == pytest.approx(1.0)
    assert rank_correlation(x, -x) == pytest.approx(-1.0)
    assert math.isnan(rank_correlation(x, torch.ones(50)))
    assert math.isnan(rank_correlation(x[:1], x[:1]))


def test_gradient_curvature_correlation_overall_and_top_k():
    g = {"a": torch.tensor([4.0, -3.0, 2.0]), "b": torch.tensor([1.0, 0.5, -0.1])}
    h = {"a": torch.tensor([1.0, 2.0, -3.0]), "b": torch.tensor([4.0, 5.0, 6.0])}
    got = gradient_curvature_correlation(g, h, topk_fraction=0.5)
    g_all, h_all = [4.0, 3.0, 2.0, 1.0, 0.5, 0.1], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert got["all"] == pytest.approx(spearman_reference(g_all, h_all))  # = -1
    assert got["topk"] == pytest.approx(-1.0)  # top 3 by |g|: (4, 1), (3, 2), (2, 3)
    with pytest.raises(ValueError, match="topk_fraction"):
        gradient_curvature_correlation(g, h, topk_fraction=0.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"iters": 0, "tol": 1e-3}, "iters"),
    ({"iters": 5, "tol": -1.0}, "tol"),
    ({"iters": 5, "tol": 1e-3, "generator": 3}, "generator"),
])
def test_bad_lanczos_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        top_hessian_eigenvalue(lambda p: p["x"].pow(2).sum(), {"x": torch.ones(3)}, **kwargs)


def test_bad_rank_and_hutchinson_arguments_are_refused():
    with pytest.raises(ValueError, match="same number"):
        rank_correlation(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="samples"):
        hutchinson_diagonal(lambda p: p["x"].sum(), {"x": torch.ones(2)}, samples=1)
