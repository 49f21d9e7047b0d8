"""The 1-D loss landscape along each update direction: loss at x + s v/||v|| over a grid of s.

Pan & Li 2023 (arXiv 2306.00204), section 3 (their Figs. 2-3): the loss on the test batch along
the normalised update. Functional: every point is a new set of tensors, so the weights are never
modified (the paper's code moved the live weights and moved them back, which is not bit-exact).
The loss at x itself (base_loss) is computed once per point: the caller can hand it in and use
it as the reference of its loss changes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from pipeline.measure.vectors import (
    Directions,
    LossFn,
    Vector,
    as_directions,
    check_loss_fn,
    check_params,
)


def base_loss(loss_fn: LossFn, params: Mapping[str, Tensor]) -> Tensor:
    """loss_fn(params) without a graph, detached: the landscape's value at s = 0 (a 0-dim tensor;
    float() of it is the reference for loss changes along the landscape)."""
    check_loss_fn(loss_fn)
    params = check_params(params)
    with torch.no_grad():
        return loss_fn(params).detach()


def loss_landscape(loss_fn: LossFn, params: Mapping[str, Tensor],
                   directions: Mapping[str, Vector] | Directions, offsets: Sequence[float], *,
                   base: Tensor | None = None) -> dict[str, list[float]]:
    """label -> [loss at x + s v/||v|| for s in offsets] (NaN where v is zero and s != 0).

    `directions`: raw (validated here) or from prepare_directions. `base`: base_loss(loss_fn,
    params) when the caller has it already (it is the value at s = 0), else computed here.
    """
    check_loss_fn(loss_fn)
    offsets = _check_offsets(offsets)
    params = check_params(params)
    directions = as_directions(directions, params)
    if base is not None:
        _check_base(base)
    labels, norms = directions.labels, directions.norms  # (K,) float64
    scale = 1 / torch.where(norms > 0, norms, torch.ones_like(norms))
    losses = []
    with torch.no_grad():
        base = base_loss(loss_fn, params) if base is None else base.detach()
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


def _check_base(base: object) -> None:
    if not (isinstance(base, Tensor) and base.numel() == 1 and base.is_floating_point()):
        raise ValueError(f"base must be the loss at params as a one-element floating tensor "
                         f"(see base_loss); got {type(base).__name__}")


def _check_offsets(offsets: Sequence[float]) -> list[float]:
    try:
        values = [float(s) for s in offsets]
    except (TypeError, ValueError):
        raise ValueError(f"offsets must be a sequence of finite numbers; got {offsets!r}") from None
    if not values or not all(math.isfinite(s) for s in values):
        raise ValueError(f"offsets must be a non-empty sequence of finite numbers; got {offsets!r}")
    return values
