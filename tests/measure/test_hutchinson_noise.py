"""How many Hutchinson samples make a usable diagonal: checked against the exact float64 diagonal."""

from __future__ import annotations

import math

import pytest
import torch

from measure_testing import flat_hessian, tiny_gpt_neo
from pipeline.config import Measure
from pipeline.measure import gradient_curvature_correlation, hutchinson_diagonal_with_error, hutchinson_noise


@pytest.fixture(scope="module")
def exact():
    """A 544-parameter GPT-Neo in float64, its exact Hessian and gradient."""
    _, loss_on, params, batches = tiny_gpt_neo(vocab=12, hidden=4, layers=2, heads=2, seq=6, batch=3,
                                               dtype=torch.float64)
    loss_fn = loss_on(batches[0])
    hessian = flat_hessian(loss_fn, params)
    return loss_fn, params, hessian, torch.func.grad(loss_fn)(params)


def unflatten(flat, params):
    out, i = {}, 0
    for n, p in params.items():
        out[n] = flat[i:i + p.numel()].view(p.shape)
        i += p.numel()
    return out


@pytest.mark.slow
def test_reported_error_matches_the_exact_off_diagonal_variance(exact):
    loss_fn, params, hessian, _ = exact
    samples = 64
    _, stderr = hutchinson_diagonal_with_error(loss_fn, params, samples=samples)
    # Var z_i (Hz)_i = sum_{j != i} H_ij^2 for Rademacher z: the exact standard error
    diag = torch.diagonal(hessian)
    true = ((hessian.pow(2).sum(1) - diag.pow(2)).clamp_min(0) / samples).sqrt()
    got = torch.cat([stderr[n].reshape(-1) for n in params])
    assert float(got.norm() / true.norm()) == pytest.approx(1.0, abs=0.15)


@pytest.mark.slow
def test_default_samples_give_a_usable_estimate_and_eight_do_not(exact):
    loss_fn, params, hessian, grad = exact
    truth = unflatten(torch.diagonal(hessian), params)
    reference = gradient_curvature_correlation(grad, truth, topk_fraction=0.1)["all"]
    default = Measure().hutchinson_samples
    noise = {}
    for samples in (8, default):
        est, err = hutchinson_diagonal_with_error(loss_fn, params, samples=samples,
                                                  generator=torch.Generator().manual_seed(1))
        noise[samples] = hutchinson_noise(est, err)
        if samples == default:
            corr = gradient_curvature_correlation(grad, est, topk_fraction=0.1)["all"]
            assert abs(corr - reference) < 0.05
            flat = torch.cat([est[n].reshape(-1) for n in params])
            assert float((flat - torch.diagonal(hessian)).norm() / torch.diagonal(hessian).norm()) < 0.4
    assert noise[8]["rel_stderr"] > 0.6  # eight samples: the error is most of the estimate
    assert noise[default]["rel_stderr"] < 0.35  # the default: usable (docs/science.md)


def test_noise_summary_by_hand():
    d = {"a": torch.tensor([3.0, -4.0]), "b": torch.tensor([0.0])}
    e = {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([0.5])}
    got = hutchinson_noise(d, e)
    assert got["rel_stderr"] == pytest.approx(math.sqrt(1 + 9 + 0.25) / 5)
    assert got["resolved"] == pytest.approx(1 / 3)  # only |3| > 2 * 1
    assert math.isnan(hutchinson_noise({"a": torch.zeros(2)}, {"a": torch.ones(2)})["rel_stderr"])
    with pytest.raises(ValueError):
        hutchinson_noise(d, {"a": e["a"]})
