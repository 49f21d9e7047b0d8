"""The log-scale coordinate histogram (paper Fig. 1) against hand counts and numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.measure import update_histogram


def test_hand_counts():
    # |v_i| / max = 1, 0.5, 0.0125, 0, 1e-9 -> log10 = 0, -0.3, -1.9, -inf, -9 over edges -4..0.
    v = {"a": torch.tensor([1.0, -0.5, 0.0125]), "b": torch.tensor([[0.0, 1e-9]])}
    edges, counts = update_histogram({"v": v}, bins=4, lo=-4.0, hi=0.0)["v"]
    assert edges == pytest.approx([-4.0, -3.0, -2.0, -1.0, 0.0])
    assert counts == [2, 0, 1, 2]


def test_matches_numpy_and_counts_every_coordinate():
    gen = torch.Generator().manual_seed(0)
    v = {"w": torch.randn(40, 30, generator=gen) * torch.rand(40, 30, generator=gen) ** 8,
         "b": torch.zeros(25), "c": torch.randn(7, generator=gen)}
    v["w"][0, :5] = 0.0
    edges, counts = update_histogram({"v": v}, bins=12, lo=-6.0, hi=0.0)["v"]
    flat = np.concatenate([t.double().abs().numpy().ravel() for t in v.values()])
    logs = np.log10(np.maximum(flat / flat.max(), 1e-300))
    expected, np_edges = np.histogram(np.clip(logs, -6.0, 0.0), bins=12, range=(-6.0, 0.0))
    assert counts == expected.tolist()
    assert edges == pytest.approx(np_edges.tolist())
    assert sum(counts) == 40 * 30 + 25 + 7
    assert counts[0] >= 25 + 5  # zeros land in the first bin


def test_all_zero_direction_counts_in_first_bin():
    hist = update_histogram({"z": {"x": torch.zeros(3, 2)}}, bins=5, lo=-3.0, hi=0.0)
    assert hist["z"][1] == [6, 0, 0, 0, 0]


def test_scale_free_and_per_direction():
    v = {"x": torch.tensor([1.0, 0.05, 0.005])}  # log10: 0, -1.3, -2.3
    hist = update_histogram({"v": v, "big": {"x": 1e6 * v["x"]}}, bins=3, lo=-3.0, hi=0.0)
    assert hist["v"][1] == hist["big"][1] == [1, 1, 1]


@pytest.mark.parametrize("kwargs, message", [
    ({"bins": 0, "lo": -1.0, "hi": 0.0}, "bins"),
    ({"bins": 2.5, "lo": -1.0, "hi": 0.0}, "bins"),
    ({"bins": 2, "lo": 0.0, "hi": -1.0}, "lo and hi"),
    ({"bins": 2, "lo": float("-inf"), "hi": 0.0}, "lo and hi"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        update_histogram({"v": {"x": torch.ones(2)}}, **kwargs)
