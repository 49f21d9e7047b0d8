"""Directional sharpness vs. brute-force float64 Hessians, double backward, finite differences."""

from __future__ import annotations

import math

import pytest
import torch
from measure_testing import (
    double_backward_sharpness,
    flat_hessian,
    flatten,
    normed_mlp,
    random_directions,
    tiny_gpt_neo,
)

from pipeline.measure import (
    SharpnessResult,
    directional_sharpness,
    gradient_correlation,
    sharpness_with_robust,
    update_norms,
)
from pipeline.optim import DEFAULT_PROBES, ProbeBank

METHODS = ("forward_over_reverse", "double_backward")


@pytest.mark.parametrize("method", METHODS)
def test_matches_brute_force_hessian_through_layer_and_batch_norm(method):
    loss_fn, params = normed_mlp()
    hessian = flat_hessian(loss_fn, params)
    directions = random_directions(params, 5)
    directions["tiny"] = {n: 1e-7 * t for n, t in directions["d0"].items()}  # scale-free
    got = directional_sharpness(loss_fn, params, directions, method=method)
    assert list(got) == list(directions)
    for label, v in directions.items():
        flat = flatten(v)
        expected = float(flat @ hessian @ flat / (flat @ flat))
        assert got[label] == pytest.approx(expected, rel=1e-6), label
    assert len({round(x, 6) for x in got.values()}) == 5  # the directions really differ


def test_chunked_equals_unchunked():
    loss_fn, params = normed_mlp(seed=3)
    directions = random_directions(params, 5, seed=4)
    whole = directional_sharpness(loss_fn, params, directions, method="forward_over_reverse")
    chunked = directional_sharpness(loss_fn, params, directions, method="forward_over_reverse",
                                    chunk_size=2)
    assert chunked == pytest.approx(whole, rel=1e-12)


def test_gpt_neo_probe_bank_directions_match_double_backward():
    model, loss_on, params, batches = tiny_gpt_neo()
    bank = ProbeBank(params)
    for ids in batches[1:]:  # a few real minibatch gradients, as along a trajectory
        live = {n: p.clone().requires_grad_(True) for n, p in params.items()}
        grads = torch.autograd.grad(loss_on(ids)(live), list(live.values()))
        bank.step(dict(zip(params, grads)), params)
    directions = bank.directions()
    assert list(directions) == [s.label for s in DEFAULT_PROBES]
    loss_fn = loss_on(batches[0])  # the fixed test batch
    got = {m: directional_sharpness(loss_fn, params, directions, method=m) for m in METHODS}
    for label, v in directions.items():
        reference = double_backward_sharpness(loss_fn, params, v)
        for method in METHODS:
            assert got[method][label] == pytest.approx(reference, rel=1e-3), (method, label)
    assert got["forward_over_reverse"] == pytest.approx(got["double_backward"], rel=1e-3)
    assert len({round(x, 4) for x in got["forward_over_reverse"].values()}) > 6


@pytest.mark.parametrize("method", METHODS)
def test_gpt_neo_float64_matches_double_backward_and_finite_differences(method):
    model, loss_on, params, batches = tiny_gpt_neo(dtype=torch.float64, hidden=16, seq=8, batch=2)
    assert all(p.dtype == torch.float64 for p in params.values())
    loss_fn = loss_on(batches[0])
    directions = random_directions(params, 2, seed=5)
    got = directional_sharpness(loss_fn, params, directions, method=method)
    for label, v in directions.items():
        assert got[label] == pytest.approx(double_backward_sharpness(loss_fn, params, v),
                                           rel=1e-10), label
        # d^2/ds^2 L(x + s u) by Richardson-extrapolated central differences: no AD rule involved.
        norm = math.sqrt(sum(float(t.pow(2).sum()) for t in v.values()))
        with torch.no_grad():
            def along(s, v=v, norm=norm):
                return float(loss_fn({n: p + s * v[n] / norm for n, p in params.items()}))

            base = along(0.0)

            def second(h, base=base):
                return (along(h) - 2 * base + along(-h)) / h**2

            h = 1e-2
            extrapolated = (4 * second(h / 2) - second(h)) / 3
        assert got[label] == pytest.approx(extrapolated, rel=1e-6), label


@pytest.mark.parametrize("method", METHODS)
def test_robust_value_used_only_for_negative_curvature(method):
    # loss = sum(x^3): H = diag(6 x). Hand values at x = (-1, 2).
    params = {"x": torch.tensor([-1.0, 2.0], dtype=torch.float64)}

    def loss_fn(p):
        return p["x"].pow(3).sum()

    directions = {
        "down": {"x": torch.tensor([3.0, 0.0], dtype=torch.float64)},
        "up": {"x": torch.tensor([0.0, 0.5], dtype=torch.float64)},
        "mixed": {"x": torch.tensor([2.0, 1.0], dtype=torch.float64)},
    }
    got = sharpness_with_robust(loss_fn, params, directions, delta=0.01, method=method)
    assert got["down"] == SharpnessResult(value=pytest.approx(6 * (-1 + 0.01)),
                                          raw=pytest.approx(-6.0), robust=True)
    assert got["up"] == SharpnessResult(value=pytest.approx(12.0), raw=pytest.approx(12.0),
                                        robust=False)
    # v = (2, 1): raw = (4 * -6 + 1 * 12) / 5 = -2.4; at x + 0.01 v/|v| H moves by 6 * shift.
    u = torch.tensor([2.0, 1.0], dtype=torch.float64) / math.sqrt(5)
    shifted = params["x"] + 0.01 * u
    expected = float((6 * shifted * u * u).sum())
    assert got["mixed"].raw == pytest.approx(-2.4)
    assert got["mixed"].robust and got["mixed"].value == pytest.approx(expected, rel=1e-12)
    wider = sharpness_with_robust(loss_fn, params, directions, delta=0.5, method=method)
    assert wider["down"].value == pytest.approx(6 * (-1 + 0.5))


def test_zero_direction_gives_nan_not_an_error():
    loss_fn, params = normed_mlp()
    directions = {"zero": {n: torch.zeros_like(p) for n, p in params.items()},
                  **random_directions(params, 1)}
    got = sharpness_with_robust(loss_fn, params, directions)
    assert math.isnan(got["zero"].value) and not got["zero"].robust
    assert math.isfinite(got["d0"].value)
    assert math.isnan(gradient_correlation(params, directions)["zero"])


def test_gradient_correlation_and_norms_by_hand():
    grads = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[3.0]])}
    directions = {"v": {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([[-1.0]])},
                  "w": {"a": torch.tensor([-2.0, 0.0]), "b": torch.tensor([[0.0]])}}
    # <g, v> = 2 - 3 = -1, ||v|| = sqrt(2); <g, w> = -2, ||w|| = 2.
    assert gradient_correlation(grads, directions) == pytest.approx(
        {"v": 1 / math.sqrt(2), "w": 1.0})
    assert update_norms(directions) == pytest.approx({"v": math.sqrt(2), "w": 2.0})


@pytest.mark.parametrize("directions, message", [
    ({}, "directions"),
    ({"v": {"x": torch.ones(2)}}, "exactly the params' names"),
    ({"v": {"x": torch.ones(2), "y": torch.ones(3), "z": torch.ones(1)}}, "exactly"),
    ({"v": {"x": torch.ones(2), "y": torch.ones(4)}}, "shape"),
])
def test_bad_directions_are_refused(directions, message):
    params = {"x": torch.zeros(2), "y": torch.zeros(3)}
    with pytest.raises(ValueError, match=message):
        directional_sharpness(lambda p: p["x"].sum(), params, directions)


def test_bad_arguments_are_refused():
    params = {"x": torch.zeros(2)}
    directions = {"v": {"x": torch.ones(2)}}
    with pytest.raises(ValueError, match="delta"):
        sharpness_with_robust(lambda p: p["x"].sum(), params, directions, delta=-1.0)
    with pytest.raises(ValueError, match="loss_fn"):
        directional_sharpness("loss", params, directions)
    with pytest.raises(ValueError, match="params"):
        directional_sharpness(lambda p: p["x"].sum(), {"x": torch.zeros(2, dtype=torch.long)},
                              directions)
    with pytest.raises(ValueError, match="chunk_size"):
        directional_sharpness(lambda p: p["x"].sum(), params, directions, chunk_size=0)
    with pytest.raises(ValueError, match="method must be one of"):
        sharpness_with_robust(lambda p: p["x"].sum(), params, directions, method="vhp")
