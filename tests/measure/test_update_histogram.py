"""The log-scale coordinate histogram (paper Fig. 1) against hand counts and numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.measure import update_histogram


def test_default_is_the_papers_absolute_bins():
    # Paper Fig. 1: |v_i| on 30 log bins from 1e-15 to 10 (log10 edges -15 + 16 j / 30).
    v = {"a": torch.tensor([3e-13, -2e-7, 5e-3], dtype=torch.float64),
         "b": torch.tensor([[0.0, 1e-20], [4.0, 50.0]], dtype=torch.float64)}
    h = update_histogram({"v": v})["v"]
    assert len(h.counts) == 30 and h.edges[0] == -15.0 and h.edges[-1] == pytest.approx(1.0)
    width = 16 / 30
    expected = [0] * 30
    for value in (3e-13, 2e-7, 5e-3, 4.0):  # absolute values, not relative to the largest (50)
        expected[int((np.log10(value) + 15) // width)] += 1
    assert h.counts == expected
    assert h.counts[4] == 1  # 3e-13: log10 -12.52 lies in [-12.87, -12.33), the fifth bin
    assert (h.below, h.above) == (2, 1)  # 0 and 1e-20 below 1e-15; 50 above 10: no edge bin
    # numpy with the paper's edges (np.logspace) on |v| agrees on every bin
    flat = np.concatenate([t.abs().numpy().ravel() for t in v.values()])
    np_counts, _ = np.histogram(flat, bins=np.logspace(-15, 1, 31))
    assert h.counts == np_counts.tolist()


def test_absolute_bins_see_the_scale():
    v = {"x": torch.tensor([1e-3, 1e-6])}
    h = update_histogram({"v": v, "big": {"x": 1e3 * v["x"]}})
    assert h["v"].counts != h["big"].counts


def test_relative_option_hand_counts():
    # |v_i| / max = 1, 0.5, 0.0125, 0, 1e-9 -> log10 = 0, -0.3, -1.9, -inf, -9 over edges -4..0.
    v = {"a": torch.tensor([1.0, -0.5, 0.0125]), "b": torch.tensor([[0.0, 1e-9]])}
    h = update_histogram({"v": v}, bins=4, lo=-4.0, hi=0.0, scale="relative")["v"]
    assert h.edges == pytest.approx([-4.0, -3.0, -2.0, -1.0, 0.0])
    assert h.counts == [0, 0, 1, 2] and (h.below, h.above) == (2, 0)


def test_relative_matches_numpy_and_counts_every_coordinate():
    gen = torch.Generator().manual_seed(0)
    v = {"w": torch.randn(40, 30, generator=gen) * torch.rand(40, 30, generator=gen) ** 8,
         "b": torch.zeros(25), "c": torch.randn(7, generator=gen)}
    v["w"][0, :5] = 0.0
    h = update_histogram({"v": v}, bins=12, lo=-6.0, hi=0.0, scale="relative")["v"]
    flat = np.concatenate([t.double().abs().numpy().ravel() for t in v.values()])
    logs = np.log10(np.maximum(flat / flat.max(), 1e-300))
    expected, np_edges = np.histogram(logs, bins=12, range=(-6.0, 0.0))
    assert h.counts == expected.tolist()
    assert h.edges == pytest.approx(np_edges.tolist())
    assert h.below + sum(h.counts) + h.above == 40 * 30 + 25 + 7
    assert h.below == int((logs < -6.0).sum()) >= 25 + 5  # zeros are below, not in the first bin


def test_all_zero_direction_is_below():
    h = update_histogram({"z": {"x": torch.zeros(3, 2)}}, bins=5, lo=-3.0, hi=0.0, scale="relative")["z"]
    assert h.counts == [0] * 5 and h.below == 6


def test_relative_is_scale_free_and_per_direction():
    v = {"x": torch.tensor([1.0, 0.05, 0.005])}  # log10: 0, -1.3, -2.3
    hist = update_histogram({"v": v, "big": {"x": 1e6 * v["x"]}}, bins=3, lo=-3.0, hi=0.0, scale="relative")
    assert hist["v"].counts == hist["big"].counts == [1, 1, 1]


@pytest.mark.parametrize("kwargs, message", [
    ({"bins": 0, "lo": -1.0, "hi": 0.0}, "bins"),
    ({"bins": 2.5, "lo": -1.0, "hi": 0.0}, "bins"),
    ({"bins": 2, "lo": 0.0, "hi": -1.0}, "lo and hi"),
    ({"bins": 2, "lo": float("-inf"), "hi": 0.0}, "lo and hi"),
    ({"scale": "log"}, "scale"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        update_histogram({"v": {"x": torch.ones(2)}}, **kwargs)
