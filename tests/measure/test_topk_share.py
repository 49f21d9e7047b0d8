"""The top-k share of SGD's sharpness against a brute-force float64 Hessian (paper Secs. 3.2, 4.1)."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.measure import shifted_sharpness, topk_sharpness_share
from tests.measure.measure_testing import flat_hessian, flatten, normed_mlp


def heavy_direction(params, seed=3):
    """A direction whose few large coordinates sit on the sharpest parameters, as the paper describes."""
    gen = torch.Generator().manual_seed(seed)
    v = {n: 1e-3 * torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in params.items()}
    v["w2"] = torch.randn(v["w2"].shape, generator=gen, dtype=torch.float64)
    return v


def test_masked_sharpness_and_share_match_the_explicit_hessian():
    loss_fn, params = normed_mlp()
    H = flat_hessian(loss_fn, params)
    v = heavy_direction(params)
    flat = flatten(v)
    P = flat.numel()

    rows = topk_sharpness_share(loss_fn, params, v, [0.05, 0.3, 1.0])

    for row, k in zip(rows, (0.05, 0.3, 1.0)):
        count = math.ceil(k * P)
        top = torch.argsort(flat.abs(), descending=True)[:count]
        rest = flat.clone()
        rest[top] = 0
        assert row["n_masked"] == count and row["topk_fraction"] == k
        assert row["sharpness"] == pytest.approx(float(flat @ H @ flat / (flat @ flat)), rel=1e-9)
        assert row["norm_share"] == pytest.approx(float(flat[top] @ flat[top] / (flat @ flat)), rel=1e-12)
        if k == 1.0:
            assert math.isnan(row["sharpness_masked"]) and row["sharpness_share"] == pytest.approx(1.0)
            continue
        assert row["sharpness_masked"] == pytest.approx(float(rest @ H @ rest / (rest @ rest)), rel=1e-9)
        assert row["sharpness_share"] == pytest.approx(1 - float(rest @ H @ rest / (flat @ H @ flat)), rel=1e-9)
    # The crafted direction's 18 large coordinates (w2) carry nearly all of its curvature.
    assert rows[1]["sharpness_share"] > 0.99 and rows[0]["sharpness_share"] < rows[1]["sharpness_share"]


def test_bad_fractions_are_refused():
    loss_fn, params = normed_mlp()
    v = heavy_direction(params)
    for bad in ([], [0.0], [1.5]):
        with pytest.raises(ValueError, match="fractions"):
            topk_sharpness_share(loss_fn, params, v, bad)


def test_shifted_sharpness_is_the_papers_eq4_for_the_labels_asked():
    loss_fn, params = normed_mlp()
    v = heavy_direction(params)
    u = {n: t / flatten(v).norm() for n, t in v.items()}
    shifted = {n: p + 0.01 * u[n] for n, p in params.items()}
    H = flat_hessian(loss_fn, shifted)
    out = shifted_sharpness(loss_fn, params, {"a": v, "b": v}, ["a"], delta=0.01)
    assert set(out) == {"a"}
    assert out["a"] == pytest.approx(float(flatten(u) @ H @ flatten(u)), rel=1e-9)
