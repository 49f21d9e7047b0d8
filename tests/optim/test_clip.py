"""Coordinate-wise clipping and its radix threshold selection, against sort-based references."""

from __future__ import annotations

import pytest
import torch

from optim_testing import sort_clip
from pipeline.optim import clip_count, clip_threshold, coordinate_clip
from pipeline.optim.select import kth_smallest_magnitude


def random_tensors(seed: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (11,), (3, 4, 2), (1,)]
    # Heavy-tailed, like gradients: a few coordinates dominate.
    return [(torch.randn(s, generator=gen) * torch.rand(s, generator=gen) ** 4).to(dtype) for s in shapes]


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.25, 0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_matches_sort_reference(fraction, dtype):
    tensors = random_tensors(0, dtype)
    out = coordinate_clip(tensors, fraction)
    for o, r, t in zip(out, sort_clip(tensors, fraction), tensors):
        assert o.dtype == t.dtype and o.shape == t.shape
        assert torch.equal(o.double(), r)


def test_fraction_zero_is_identity_and_inputs_unmodified():
    tensors = random_tensors(1)
    before = [t.clone() for t in tensors]
    out = coordinate_clip(tensors, 0.0)
    assert all(torch.equal(o, t) for o, t in zip(out, tensors))
    assert all(o.data_ptr() != t.data_ptr() for o, t in zip(out, tensors))
    coordinate_clip(tensors, 0.3)
    assert all(torch.equal(a, b) for a, b in zip(tensors, before))


def test_exact_count_signs_and_idempotence():
    tensors = random_tensors(2)  # continuous values: no ties
    n = sum(t.numel() for t in tensors)
    fraction = 0.2
    c = clip_count(n, fraction)
    assert c == int(0.2 * n)
    out = coordinate_clip(tensors, fraction)
    threshold = clip_threshold(tensors, fraction)
    assert threshold.dim() == 0 and threshold.device == tensors[0].device
    tau = float(threshold)
    flat_in, flat_out = torch.cat([t.flatten() for t in tensors]), torch.cat([o.flatten() for o in out])
    changed = flat_in != flat_out
    assert int(changed.sum()) == c  # exactly the c largest |x| move
    assert torch.equal(flat_out[changed].abs(), torch.full((c,), tau))
    assert flat_in.abs()[changed].min() > flat_in.abs()[~changed].max()
    assert torch.equal(torch.sign(flat_out), torch.sign(flat_in))
    again = coordinate_clip(out, fraction)
    assert all(torch.equal(a, b) for a, b in zip(again, out))


def test_ties_at_the_threshold_are_left_alone():
    # |x| = 5 4 4 4 1: with c = 2 the cut falls inside the tie at 4; tau = 4, and only the 5 moves.
    x = torch.tensor([4.0, -5.0, 1.0, -4.0, 4.0])
    out = coordinate_clip([x], 0.4)[0]
    assert torch.equal(out, torch.tensor([4.0, -4.0, 1.0, -4.0, 4.0]))
    assert float(clip_threshold([x], 0.4)) == 4.0


def test_threshold_is_global_not_per_tensor():
    big, small = torch.tensor([10.0, 9.0, 8.0, 7.0]), torch.tensor([0.4, -0.3, 0.2, 0.1])
    out = coordinate_clip([big, small], 0.5)
    # Global: the 4 largest of all 8 are in `big`, tau = 0.4 (the 5th largest); per tensor,
    # `small` would have been clipped at its own median instead.
    assert torch.equal(out[0], torch.full((4,), 0.4))
    assert torch.equal(out[1], small)
    per_tensor = coordinate_clip([small], 0.5)[0]
    assert not torch.equal(per_tensor, out[1])


def test_fraction_one_points_along_sign_even_with_zeros():
    g = torch.tensor([0.0, 3.0, -0.5, 0.0, 2.0, -7.0])
    out = coordinate_clip([g], 1.0)[0]
    assert torch.equal(out, 0.5 * torch.sign(g))
    assert torch.equal(coordinate_clip([torch.zeros(3)], 1.0)[0], torch.zeros(3))


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.1", True])
def test_bad_fraction(bad):
    with pytest.raises(ValueError, match="fraction"):
        coordinate_clip([torch.ones(3)], bad)


def test_bad_tensors():
    with pytest.raises(ValueError, match="tensors"):
        coordinate_clip([], 0.1)
    with pytest.raises(ValueError, match="floating point"):
        coordinate_clip([torch.arange(4)], 0.1)


def selection_cases() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    wide = torch.randn(5000, generator=gen) * torch.exp(torch.randn(5000, generator=gen) * 8)
    ties = torch.randint(-3, 4, (3000,), generator=gen).float()  # many equal values and zeros
    tiny = torch.cat([torch.tensor([1e-45, 3e-42, -1e-40, 0.0, -0.0]), torch.rand(200, generator=gen) * 1e-38])
    same_bucket = 1.0 + torch.arange(4000).float() * 2**-23  # all in one level-1 bucket
    return [wide, ties, tiny, same_bucket, torch.tensor([float("inf"), 1.0, -2.0])]


@pytest.mark.parametrize("case", range(5))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_radix_selection_matches_sort(case, dtype):
    x = selection_cases()[case].to(dtype)
    # Split unevenly across tensors and chunks to exercise the accumulation over both.
    parts = list(x.split([x.numel() // 3, x.numel() - x.numel() // 3]))
    ref = x.float().abs().sort().values
    n = x.numel()
    for k in sorted({1, 2, n // 7, n // 2, n - 1, n} - {0}):
        assert kth_smallest_magnitude(parts, k).item() == ref[k - 1].item(), k


def test_radix_selection_with_small_chunks(monkeypatch):
    import pipeline.optim.select as select
    monkeypatch.setattr(select, "_CPU_CHUNK", 64)
    x = selection_cases()[0]
    ref = x.abs().sort().values
    for k in (1, 100, 2500, 4999, 5000):
        assert select.kth_smallest_magnitude([x[:1234], x[1234:]], k) == ref[k - 1]
