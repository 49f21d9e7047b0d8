"""Coordinate-wise clipping with one global threshold (Pan & Li 2023, section 5)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from pipeline.optim.select import kth_smallest_magnitude


def check_fraction(fraction: float, *, name: str = "fraction") -> float:
    """`fraction` as a float in [0, 1]; ValueError naming `name` otherwise."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0.0 <= fraction <= 1.0:  # NaN fails both comparisons
        raise ValueError(f"{name} must be a float in [0, 1]; got {fraction!r}")
    return float(fraction)


def clip_count(numel: int, fraction: float) -> int:
    """How many coordinates a clip of `fraction` moves to the threshold: floor(fraction * numel).

    The 1e-6 absorbs the float error of `fraction * numel` (0.29 * 100 = 28.999999999999996),
    which is below 1e-6 for any numel under 1e9.
    """
    return min(numel, math.floor(check_fraction(fraction) * numel + 1e-6))


def clip_threshold(tensors: Sequence[Tensor], fraction: float) -> Tensor:
    """The global threshold tau of `coordinate_clip`, a 0-dim tensor on the tensors' device.

    With n coordinates in all and c = clip_count(n, fraction):
      - 0 < c < n: tau is the (c+1)-th largest |x| (as in the paper's code, which sorts |g| in
        descending order and takes index int(n * k));
      - c = 0: tau = max |x|, so that clipping is the identity;
      - c = n (fraction 1): tau is the smallest *non-zero* |x|, so that every coordinate becomes
        sign(x) * tau and the clipped gradient points along sign(g) even when some coordinates
        are exactly zero (the smallest |x| would then be 0 and wipe the update out).
    """
    check_fraction(fraction)
    tensors = _check_tensors(tensors)
    n = sum(t.numel() for t in tensors)
    c = clip_count(n, fraction)
    if c == 0:
        return torch.stack(torch._foreach_norm(tensors, math.inf)).amax()
    if c == n:
        smallest = torch.stack([t.abs().masked_fill(t == 0, math.inf).amin() for t in tensors]).amin()
        return torch.where(torch.isinf(smallest), torch.zeros_like(smallest), smallest)  # all zero
    return kth_smallest_magnitude(tensors, n - c)


def coordinate_clip(tensors: Sequence[Tensor], fraction: float) -> list[Tensor]:
    """Clip the top `fraction` of coordinates, by |x| over *all* tensors together, to sign(x) * tau.

    Every output coordinate is `clamp(x, -tau, tau)` with the single threshold
    tau = clip_threshold(tensors, fraction). Exactly c = floor(fraction * n) coordinates - the c
    largest |x| - end at +-tau. Ties: tau is itself the (c+1)-th largest |x|, so a coordinate tied
    with tau is unchanged whichever side of the cut a sort would put it; the number of coordinates
    whose value changes is #{|x| > tau} (c when the c-th and (c+1)-th largest |x| differ, fewer
    when they tie). Consequences: fraction 0 is the identity; signs are kept; clipping twice with
    the same fraction changes nothing more (idempotent); fraction 1 gives tau * sign(x).

    Inputs are not modified; the outputs are new tensors. Runs on the tensors' device with no
    host copy (the threshold comes from a radix selection, not a sort: see select.py).
    """
    return clip_with_threshold(tensors, fraction)[0]


def clip_with_threshold(tensors: Sequence[Tensor], fraction: float) -> tuple[list[Tensor], Tensor | None]:
    """coordinate_clip's output and the threshold tau it used (a 0-dim tensor; None for fraction 0)."""
    check_fraction(fraction)
    tensors = _check_tensors(tensors)
    if fraction == 0:
        return [t.clone() for t in tensors], None
    tau = clip_threshold(tensors, fraction)
    return [torch.clamp(t, -tau.to(t.dtype), tau.to(t.dtype)) for t in tensors], tau


def _check_tensors(tensors: Sequence[Tensor]) -> list[Tensor]:
    tensors = [t.detach() for t in tensors]
    if not tensors or sum(t.numel() for t in tensors) == 0:
        raise ValueError("tensors must hold at least one coordinate; got none")
    if any(not t.is_floating_point() for t in tensors):
        raise ValueError("tensors must be floating point")
    if len({t.device for t in tensors}) > 1:
        raise ValueError("tensors must all be on one device; got "
                         f"{sorted(str(d) for d in {t.device for t in tensors})}")
    return tensors
