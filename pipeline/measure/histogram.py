"""Histogram of an update's coordinates on a log scale: absolute |v_i| (paper Fig. 1) or relative to max|v|.

Pan & Li 2023 (arXiv 2306.00204), Fig. 1 and Sec. 3.2: the distribution of the absolute values
|v_i| of the update's coordinates over 30 logarithmic bins from 1e-15 to 10 (their text: half of
SGD's coordinates between 1e-12 and 1e-6, a few as large as 1e-4 to 1e-2). That is the default
here (`scale="absolute"`, lo = -15, hi = 1 in log10). `scale="relative"` bins |v_i| / max|v|
instead (our earlier form, scale free, 1e-8 to 1 by default), which hides absolute magnitudes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor

from pipeline.labels import HISTOGRAM_RANGE
from pipeline.measure.vectors import Directions, Vector, check_direction_set

SCALES = tuple(HISTOGRAM_RANGE)  # absolute, relative
DEFAULT_RANGE = HISTOGRAM_RANGE  # log10 range of the bins per scale when none is given
PAPER_BINS = 30


class Histogram(NamedTuple):
    """Counts of one direction: `counts[j]` in [10**edges[j], 10**edges[j+1]) (the last bin
    closed), `below` the coordinates under 10**edges[0] (exact zeros among them), `above` those
    over 10**edges[-1]; below + sum(counts) + above is the number of coordinates."""

    edges: list[float]  # log10 of the bin edges, bins + 1 of them
    counts: list[int]
    below: int
    above: int


def update_histogram(directions: Mapping[str, Vector] | Directions, *, bins: int = PAPER_BINS,
                     lo: float | None = None, hi: float | None = None,
                     scale: str = "absolute") -> dict[str, Histogram]:
    """label -> Histogram of log10 |v_i| (`absolute`) or log10 |v_i| / max|v| (`relative`).

    `lo`, `hi`: log10 of the range's ends (None: DEFAULT_RANGE[scale]); `bins` equal bins in
    log10 between them. Values outside the range are counted in `below` / `above`, never in an
    edge bin; non-finite coordinates count as zeros (in `below`).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}; got {scale!r}")
    lo = DEFAULT_RANGE[scale][0] if lo is None else lo
    hi = DEFAULT_RANGE[scale][1] if hi is None else hi
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be a positive int; got {bins!r}")
    if not (_finite(lo) and _finite(hi) and lo < hi):
        raise ValueError(f"lo and hi must be finite numbers with lo < hi; got lo={lo!r}, hi={hi!r}")
    if not isinstance(directions, Directions):  # a prepared set was validated already
        directions = check_direction_set(directions)
    labels = list(directions)
    counts = torch.stack([_counts(directions[k], bins, float(lo), float(hi), scale) for k in labels])
    edges = [lo + (hi - lo) * j / bins for j in range(bins + 1)]
    return {k: Histogram(list(edges), c[1:-1], c[0], c[-1]) for k, c in zip(labels, counts.tolist())}


def _counts(vec: Vector, bins: int, lo: float, hi: float, scale: str) -> Tensor:
    """(bins + 2,) int64: [below, the bins..., above] over every coordinate, on vec's device."""
    finite = [torch.where(torch.isfinite(t), t, torch.zeros_like(t)) for t in vec.values()]
    peak = torch.stack([t.abs().max() for t in finite]).max().to(torch.float64)
    unit = torch.where(peak > 0, peak, torch.ones_like(peak)) if scale == "relative" else torch.ones_like(peak)
    total = torch.zeros(bins + 2, dtype=torch.int64, device=peak.device)
    for t in finite:
        logs = torch.log10(t.abs().to(torch.float64).flatten() / unit)  # log10(0) = -inf: below
        position = (logs - lo) * (bins / (hi - lo))
        index = position.floor().clamp(-1, bins).to(torch.int64) + 1  # 0: below, bins + 1: above
        index = torch.where(logs == hi, torch.full_like(index, bins), index)  # the last bin is closed
        total += torch.bincount(index, minlength=bins + 2)
    return total


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
