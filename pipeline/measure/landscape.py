"""The 1-D loss landscape along each update direction: loss at x + s v/||v|| over a grid of s.

Pan & Li 2023 (arXiv 2306.00204), section 3 (their Figs. 2-3): the loss on the test batch along
the normalised update. Functional: every point is a new set of tensors, so the weights are never
modified (the paper's code moved the live weights and moved them back, which is not bit-exact).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from pipeline.measure.vectors import (
    LossFn,
    Vector,
    check_directions,
    check_loss_fn,
    check_params,
    vector_norm,
)


def loss_landscape(loss_fn: LossFn, params: Mapping[str, Tensor],
                   directions: Mapping[str, Vector],
                   offsets: Sequence[float]) -> dict[str, list[float]]:
    """label -> [loss at x + s v/||v|| for s in offsets] (NaN where v is zero and s != 0)."""
    check_loss_fn(loss_fn)
    offsets = _check_offsets(offsets)
    params = check_params(params)
    directions = check_directions(directions, params)
    labels = list(directions)
    norms = torch.stack([vector_norm(directions[k]) for k in labels])  # (K,) float64
    scale = 1 / torch.where(norms > 0, norms, torch.ones_like(norms))
    losses = []
    with torch.no_grad():
        base = loss_fn(params).detach()
        for i, label in enumerate(labels):
            v = directions[label]
            for s in offsets:
                if s == 0.0:
                    losses.append(base)  # x + 0 v is x itself: reuse, and exactly so
                    continue
                step = s * scale[i]  # s / ||v||, on the device: no host sync per point
                point = {n: p + step.to(p.dtype) * v[n] for n, p in params.items()}
                losses.append(loss_fn(point).detach())
    # One device-to-host copy for the whole grid, not one per evaluation.
    table = torch.stack(losses).reshape(len(labels), len(offsets)).to(torch.float64)
    zero = (norms == 0)[:, None] & (torch.tensor(offsets, device=norms.device) != 0)[None, :]
    table = torch.where(zero, torch.full_like(table, math.nan), table)
    return dict(zip(labels, table.tolist()))


def _check_offsets(offsets: Sequence[float]) -> list[float]:
    try:
        values = [float(s) for s in offsets]
    except (TypeError, ValueError):
        raise ValueError(f"offsets must be a sequence of finite numbers; got {offsets!r}") from None
    if not values or not all(math.isfinite(s) for s in values):
        raise ValueError(f"offsets must be a non-empty sequence of finite numbers; got {offsets!r}")
    return values
