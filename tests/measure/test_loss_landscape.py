"""The 1-D landscape: direct evaluation at x + s v/||v||, weights never modified."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from pipeline.measure import loss_landscape


def module_loss():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 1)).eval()
    x, y = torch.randn(8, 3), torch.randn(8, 1)

    def loss_fn(p):
        return (functional_call(net, p, (x,)) - y).pow(2).mean()

    return net, loss_fn


def test_matches_direct_evaluation_and_leaves_weights_bit_exact():
    net, loss_fn = module_loss()
    params = {n: p.detach() for n, p in net.named_parameters()}
    before = {n: p.clone() for n, p in params.items()}
    module_before = [p.detach().clone() for p in net.parameters()]
    gen = torch.Generator().manual_seed(1)
    directions = {k: {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}
                  for k in ("a", "b")}
    offsets = [-0.5, -0.1, 0.0, 0.1, 1.0]
    got = loss_landscape(loss_fn, params, directions, offsets)
    assert list(got) == ["a", "b"] and all(len(c) == len(offsets) for c in got.values())
    for label, v in directions.items():
        norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in v.values()))
        for s, loss in zip(offsets, got[label]):
            with torch.no_grad():
                point = {n: p + s * (v[n] / norm) for n, p in before.items()}
                assert loss == pytest.approx(float(loss_fn(point)), rel=1e-6, abs=1e-7)
        assert got[label][2] == float(loss_fn(before))  # s = 0 is the loss at x, exactly
        assert got[label][0] != got[label][-1]
    assert all(torch.equal(params[n], before[n]) for n in params)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), module_before))


def test_scaling_a_direction_does_not_change_its_landscape():
    net, loss_fn = module_loss()
    params = {n: p.detach() for n, p in net.named_parameters()}
    v = {n: torch.full_like(p, 0.3) for n, p in params.items()}
    got = loss_landscape(loss_fn, params, {"v": v, "big": {n: 1e3 * t for n, t in v.items()}},
                         [0.2, 0.7])
    assert got["big"] == pytest.approx(got["v"], rel=1e-6)


def test_zero_direction_is_nan_off_the_origin():
    net, loss_fn = module_loss()
    params = {n: p.detach() for n, p in net.named_parameters()}
    zero = {n: torch.zeros_like(p) for n, p in params.items()}
    got = loss_landscape(loss_fn, params, {"z": zero}, [0.0, 0.5])
    assert got["z"][0] == float(loss_fn(params)) and math.isnan(got["z"][1])


@pytest.mark.parametrize("offsets", [[], [math.inf], "ab", None])
def test_bad_offsets_are_refused(offsets):
    params = {"x": torch.zeros(2)}
    with pytest.raises(ValueError, match="offsets"):
        loss_landscape(lambda p: p["x"].sum(), params, {"v": {"x": torch.ones(2)}}, offsets)
