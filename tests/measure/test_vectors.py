"""Prepared direction sets: one validation and one norm per direction per measurement point."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from measure_testing import normed_mlp, random_directions

from pipeline.measure import (
    Directions,
    base_loss,
    directional_sharpness,
    gradient_correlation,
    loss_landscape,
    prepare_directions,
    sharpness_with_robust,
    update_histogram,
    update_norms,
)
from pipeline.measure import vectors

OFFSETS = [-0.1, 0.0, 0.1]


def point_inputs():
    loss_fn, params = normed_mlp(seed=7)
    directions = random_directions(params, 3, seed=8)
    directions["zero"] = {n: torch.zeros_like(p) for n, p in params.items()}
    return loss_fn, params, directions, torch.func.grad(loss_fn)(params)


def measurement_point(loss_fn, params, directions, grads) -> dict:
    """What the experiment computes at one point, the directions prepared once."""
    d = prepare_directions(params, directions)
    return {
        "sharpness": {k: (r.value, r.raw, r.robust) for k, r in sharpness_with_robust(
            loss_fn, params, d, method="double_backward").items()},
        "correlation": gradient_correlation(grads, d),
        "norms": update_norms(d),
        "landscape": loss_landscape(loss_fn, params, d, OFFSETS, base=base_loss(loss_fn, params)),
        "histogram": update_histogram(d, bins=8, lo=-4.0, hi=0.0),
    }


def raw_point(loss_fn, params, directions, grads) -> dict:
    """The same measurements with the raw mapping: each call validates it again."""
    return {
        "sharpness": {k: (r.value, r.raw, r.robust) for k, r in sharpness_with_robust(
            loss_fn, params, directions, method="double_backward").items()},
        "correlation": gradient_correlation(grads, directions),
        "norms": update_norms(directions),
        "landscape": loss_landscape(loss_fn, params, directions, OFFSETS),
        "histogram": update_histogram(directions, bins=8, lo=-4.0, hi=0.0),
    }


def test_prepared_and_raw_give_the_same_floats_exactly():
    loss_fn, params, directions, grads = point_inputs()
    prepared = measurement_point(loss_fn, params, directions, grads)
    raw = raw_point(loss_fn, params, directions, grads)
    # repr: exact floats, and NaN (the zero direction) compares equal to itself.
    assert repr(prepared) == repr(raw)
    assert math.isnan(prepared["sharpness"]["zero"][0])
    d = prepare_directions(params, directions)
    assert repr(directional_sharpness(loss_fn, params, d)) == repr(
        directional_sharpness(loss_fn, params, directions))


def test_one_validation_and_one_norm_per_direction_per_point(monkeypatch):
    loss_fn, params, directions, grads = point_inputs()
    calls = {"check_directions": 0, "vector_norm": 0}
    for name in calls:
        original = getattr(vectors, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(vectors, name, counted)
    measurement_point(loss_fn, params, directions, grads)
    assert calls == {"check_directions": 1, "vector_norm": len(directions)}
    calls.update(check_directions=0, vector_norm=0)
    raw_point(loss_fn, params, directions, grads)  # the cost the prepared set saves
    assert calls == {"check_directions": 5, "vector_norm": 4 * len(directions)}


def test_norms_are_computed_once_and_reused():
    _, params, directions, grads = point_inputs()
    d = prepare_directions(params, directions)
    expected = torch.stack([vectors.vector_norm(directions[k]) for k in directions])
    assert d.norms.dtype == torch.float64 and torch.equal(d.norms, expected)
    assert update_norms(d) == dict(zip(directions, expected.tolist()))
    assert prepare_directions(params, d) is d  # already prepared: neither checked nor recomputed


def test_the_base_loss_is_computed_once_when_handed_in():
    loss_fn, params, directions, _ = point_inputs()
    d = prepare_directions(params, directions)
    evaluated = []

    def counting(p):
        # True for the loss at x itself: the params' own storage, not a moved copy.
        evaluated.append(all(p[n].data_ptr() == params[n].data_ptr() for n in params))
        return loss_fn(p)

    base = base_loss(counting, params)
    with_base = loss_landscape(counting, params, d, OFFSETS, base=base)
    assert evaluated.count(True) == 1 and base.dim() == 0 and not base.requires_grad
    without = loss_landscape(counting, params, d, OFFSETS)
    assert evaluated.count(True) == 2  # computed again when not handed in
    assert repr(with_base) == repr(without)
    assert all(curve[1] == float(base) for curve in with_base.values())  # s = 0 is the base


def test_a_prepared_set_is_a_read_only_mapping():
    _, params, directions, _ = point_inputs()
    d = prepare_directions(params, directions)
    assert isinstance(d, Directions) and list(d) == d.labels == list(directions) and len(d) == 4
    # Same dtype: no copies, the caller's storage.
    assert all(d[k][n].data_ptr() == directions[k][n].data_ptr() for k in directions for n in params)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.norms = torch.zeros(4)
    with pytest.raises(TypeError):
        d.vectors["extra"] = directions["d0"]
    with pytest.raises(TypeError):
        d["d0"]["w1"] = torch.zeros(6, 4)
    assert "Directions(4 over 7 tensors" in repr(d)


def test_directions_are_cast_to_the_params_dtype():
    params = {"x": torch.zeros(3, dtype=torch.float64)}
    d = prepare_directions(params, {"v": {"x": torch.tensor([3.0, 4.0, 0.0])}})
    assert d["v"]["x"].dtype == torch.float64 and d.norms.tolist() == [5.0]


def one_line_error(call) -> str:
    with pytest.raises(ValueError) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


PARAMS = {"x": torch.zeros(2), "y": torch.zeros(3)}


@pytest.mark.parametrize("directions, message", [
    ({}, "directions must be a non-empty mapping"),
    ([1, 2], "directions must be a non-empty mapping"),
    ({"v": torch.ones(2)}, "directions['v'] must map exactly the params' names"),
    ({"v": {"x": torch.ones(2)}}, "directions['v'] must map exactly the params' names"),
    ({"v": {"x": torch.ones(2), "y": torch.ones(4)}},
     "directions['v']['y'] must be a tensor of shape (3,)"),
    ({"v": {"x": torch.ones(2), "y": [0.0] * 3}},
     "directions['v']['y'] must be a tensor of shape (3,)"),
    ({"v": {"x": torch.ones(2, device="meta"), "y": torch.ones(3)}},
     "directions['v']['x'] is on meta; params are on cpu"),
])
def test_bad_direction_sets_are_refused_in_one_line_naming_the_problem(directions, message):
    assert message in one_line_error(lambda: prepare_directions(PARAMS, directions))


def test_bad_params_are_refused_in_one_line():
    message = one_line_error(lambda: prepare_directions({"x": torch.zeros(2, dtype=torch.long)},
                                                        {"v": {"x": torch.ones(2)}}))
    assert "params must be floating-point tensors; not so for ['x']" in message


@pytest.mark.parametrize("other, message", [
    ({"x": torch.zeros(2)},
     "directions were prepared for other params: these lack ['y'] and add []"),
    ({"x": torch.zeros(2), "y": torch.zeros(3), "z": torch.zeros(1)}, "lack [] and add ['z']"),
    ({"x": torch.zeros(2), "y": torch.zeros(4)},
     "directions were prepared for 'y' of shape (3,), torch.float32 on cpu; these params' is (4,)"),
    ({"x": torch.zeros(2), "y": torch.zeros(3, dtype=torch.float64)},
     "these params' is (3,), torch.float64 on cpu"),
])
def test_a_set_prepared_for_other_params_is_refused_in_one_line(other, message):
    d = prepare_directions(PARAMS, {"v": {"x": torch.ones(2), "y": torch.ones(3)}})
    assert message in one_line_error(lambda: gradient_correlation(other, d))
    assert message in one_line_error(
        lambda: directional_sharpness(lambda p: p["x"].sum(), other, d))
    assert message in one_line_error(lambda: prepare_directions(other, d))


def test_a_bad_base_is_refused():
    d = prepare_directions(PARAMS, {"v": {"x": torch.ones(2), "y": torch.ones(3)}})
    message = one_line_error(lambda: loss_landscape(lambda p: p["x"].sum(), PARAMS, d, [0.1],
                                                    base=0.5))
    assert message.startswith("base must be the loss at params") and "base_loss" in message
