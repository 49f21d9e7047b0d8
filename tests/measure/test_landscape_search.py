"""The per-probe step search (paper Figs. 2-4): known 1-D losses and a real direction."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.measure import landscape_search, loss_landscape, search_step


@pytest.mark.parametrize("minimum", [0.37, 3.1e-5, 250.0])
def test_finds_the_minimum_of_a_quadratic_to_its_resolution(minimum):
    calls = []

    def loss(s):
        calls.append(s)
        return 2.0 + 0.5 * (s - minimum) ** 2 / minimum**2

    base = loss(0.0)
    calls.clear()
    found = search_step(loss, base, start=1e-3, growth=2.0, refinements=4, points=4)
    assert found.bracketed
    assert abs(found.best_step - minimum) <= found.resolution
    assert found.resolution < 0.05 * minimum  # four refinements: the bracket is a few % wide
    assert found.best_reduction == pytest.approx(base - loss(found.best_step))
    assert 0 < found.best_reduction <= 0.5
    assert found.rise_step is not None and found.rise_step > minimum
    assert found.evaluations == len(set(calls))
    # more refinements, finer resolution
    finer = search_step(loss, base, start=1e-3, growth=2.0, refinements=8, points=4)
    assert finer.resolution < found.resolution and abs(finer.best_step - minimum) <= finer.resolution


def test_rise_step_is_where_the_growing_sweep_turns():
    found = search_step(lambda s: (s - 0.37) ** 2, 0.37**2, start=0.01, growth=2.0, refinements=0)
    # sweep 0.01, 0.02, ..., 0.32 (falling), 0.64 (rises): bracket (0.16, 0.32, 0.64)
    assert found.rise_step == pytest.approx(0.64) and found.best_step == pytest.approx(0.32)


def test_an_ascending_direction_has_no_reduction():
    found = search_step(lambda s: 1.0 + s, 1.0, start=1e-3, max_steps=10)
    assert found.best_reduction < 0 and not found.bracketed and found.rise_step == 1e-3


def test_a_loss_still_falling_at_the_end_is_not_bracketed():
    found = search_step(lambda s: -s, 0.0, start=1.0, max_steps=5)
    assert not found.bracketed and found.rise_step is None and found.best_step == 32.0
    assert math.isinf(found.resolution)


def test_a_blow_up_counts_as_a_rise():
    found = search_step(lambda s: (s - 0.3) ** 2 if s < 1 else math.nan, 0.09, start=0.1, refinements=2)
    assert found.bracketed and abs(found.best_step - 0.3) <= found.resolution


def test_landscape_search_along_real_directions_agrees_with_the_grid():
    torch.manual_seed(0)
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randn(32, dtype=torch.float64)
    params = {"w": torch.zeros(4, dtype=torch.float64)}

    def loss_fn(p):
        return (x @ p["w"] - y).pow(2).mean()

    g = torch.func.grad(loss_fn)(params)
    directions = {"descent": {"w": -g["w"]}, "zero": {"w": torch.zeros(4, dtype=torch.float64)}}
    found = landscape_search(loss_fn, params, directions, start=1e-3, refinements=6)
    best = found["descent"]
    # exact line minimum of a quadratic along u = -g/||g||: s* = ||g|| / (u^T H u), H = 2 X^T X / n
    u = -g["w"] / g["w"].norm()
    s_star = float(g["w"].norm() / (u @ (2 * x.T @ x / 32) @ u))
    assert abs(best.best_step - s_star) <= best.resolution
    grid = loss_landscape(loss_fn, params, {"descent": directions["descent"]}, [best.best_step])["descent"]
    assert best.best_loss == pytest.approx(grid[0], rel=1e-12)
    assert math.isnan(found["zero"].best_step) and found["zero"].evaluations == 0
    assert torch.equal(params["w"], torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("kwargs", [{"start": 0.0}, {"growth": 1.0}, {"refinements": -1}, {"points": 0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        search_step(lambda s: s, 0.0, **kwargs)
