"""Histogram of an update's coordinates on a log scale, relative to its largest coordinate.

Pan & Li 2023 (arXiv 2306.00204), Fig. 1: the distribution of log10(|v_i| / ||v||_inf) over all
coordinates of an update. Adaptive and sign-like updates are much flatter than SGD's, whose
mass sits many decades below its few largest coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from pipeline.measure.vectors import Directions, Vector, check_direction_set


def update_histogram(directions: Mapping[str, Vector] | Directions, *, bins: int, lo: float,
                     hi: float) -> dict[str, tuple[list[float], list[int]]]:
    """label -> (bin edges (bins + 1), counts (bins)) of log10(|v_i| / ||v||_inf).

    Bins are [edge_j, edge_j+1), the last one closed. Coordinates below 10**lo (zeros included,
    and every coordinate of an all-zero v) count in the first bin, any above 10**hi in the last,
    so the counts sum to the number of coordinates. Non-finite coordinates count in the first bin.
    """
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be a positive int; got {bins!r}")
    if not (_finite(lo) and _finite(hi) and lo < hi):
        raise ValueError(f"lo and hi must be finite numbers with lo < hi; got lo={lo!r}, hi={hi!r}")
    if not isinstance(directions, Directions):  # a prepared set was validated already
        directions = check_direction_set(directions)
    labels = list(directions)
    counts = torch.stack([_counts(directions[k], bins, float(lo), float(hi)) for k in labels])
    edges = [lo + (hi - lo) * j / bins for j in range(bins + 1)]
    return {k: (list(edges), c) for k, c in zip(labels, counts.tolist())}


def _counts(vec: Vector, bins: int, lo: float, hi: float) -> Tensor:
    """(bins,) int64 counts over every coordinate of vec, computed on its device."""
    finite = [torch.where(torch.isfinite(t), t, torch.zeros_like(t)) for t in vec.values()]
    peak = torch.stack([t.abs().max() for t in finite]).max()
    total = torch.zeros(bins, dtype=torch.int64, device=peak.device)
    for t in finite:
        # |v_i| / max is in [0, 1]; log10(0) = -inf lands in the first bin after the clamp.
        ratio = t.abs().to(torch.float64) / torch.where(peak > 0, peak, torch.ones_like(peak))
        position = (torch.log10(ratio.flatten()) - lo) * (bins / (hi - lo))
        index = position.floor().clamp(0, bins - 1).to(torch.int64)
        total += torch.bincount(index, minlength=bins)
    return total


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
