"""The 1-D loss landscape along each update direction: loss at x + s v/||v||, on a grid and searched.

Pan & Li 2023 (arXiv 2306.00204), section 3 (their Figs. 2-4, 7-16): the loss on the measurement
batch along the normalised update, with the step size searched per algorithm (the grid refined
until the loss rises) and the best loss reduction read off (search_step, landscape_search).
Functional: every point is a new set of tensors, so the weights are never
modified (the paper's code moved the live weights and moved them back, which is not bit-exact).
The loss at x itself (base_loss) is computed once per point: the caller can hand it in and use
it as the reference of its loss changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class StepSearch:
    """The outcome of search_step along one direction (steps are distances s along v/||v||)."""

    best_step: float  # the evaluated s > 0 with the lowest loss
    best_loss: float
    best_reduction: float  # loss at s = 0 minus best_loss (negative: no step lowered the loss)
    rise_step: float | None  # first step of the geometric sweep where the loss rose again; None: never
    resolution: float  # for a loss unimodal on the bracket, |argmin - best_step| <= resolution
    evaluations: int  # loss evaluations spent (s = 0 not counted)
    bracketed: bool  # False: the loss still fell at the sweep's largest step (or never fell)


def search_step(loss_at: Callable[[float], float], base: float, *, start: float = 1e-3,
                growth: float = 2.0, max_steps: int = 40, refinements: int = 3,
                points: int = 4) -> StepSearch:
    """The step s > 0 that minimises loss_at(s), searched as the paper does: grow, then refine.

    1. Sweep s = start * growth^k (k = 0, 1, ...) while the loss keeps falling; the first s where
       it rises (`rise_step`) closes the bracket around the best grid step. When the loss does
       not fall below `base` (the loss at s = 0) at `start`, sweep downwards (start / growth^k)
       until it does. At most `max_steps` steps either way.
    2. Refine `refinements` times: `points` equally spaced steps inside the bracket, keep the best
       and its two neighbours as the new bracket (it shrinks by about (points + 1) / 2 each time).
    Pure: `loss_at` is called with floats only; its values are converted with float().
    """
    if not (_positive(start) and _positive(growth) and growth > 1):
        raise ValueError(f"start must be > 0 and growth > 1; got start={start!r}, growth={growth!r}")
    for name, value, low in (("max_steps", max_steps, 1), ("refinements", refinements, 0), ("points", points, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    base = float(base)
    seen: dict[float, float] = {}

    def f(s: float) -> float:
        if s not in seen:
            value = float(loss_at(s))
            seen[s] = value if math.isfinite(value) else math.inf  # a blow-up is a rise
        return seen[s]

    lo, mid, hi, rise = _bracket(f, base, start, growth, max_steps)
    bracketed = hi is not None
    if bracketed:
        for _ in range(refinements):
            inner = [lo + (hi - lo) * j / (points + 1) for j in range(1, points + 1)]
            xs = sorted({lo, mid, hi, *inner})
            values = [base if x == 0.0 else f(x) for x in xs]
            i = min(range(1, len(xs) - 1), key=lambda j: (values[j], xs[j]))
            lo, mid, hi = xs[i - 1], xs[i], xs[i + 1]
    best = min(seen, key=lambda s: (seen[s], s))
    resolution = max(mid - lo, hi - mid) if bracketed else math.inf
    return StepSearch(best_step=best, best_loss=seen[best], best_reduction=base - seen[best],
                      rise_step=rise, resolution=resolution, evaluations=len(seen), bracketed=bracketed)


def _bracket(f: Callable[[float], float], base: float, start: float, growth: float,
             max_steps: int) -> tuple[float, float, float | None, float | None]:
    """(lo, mid, hi, rise): f(mid) below f(lo) (f(0) = base) and f(hi); hi None when not bracketed."""
    if f(start) < base:  # the loss falls at start: grow until it rises
        previous, current = 0.0, start
        for _ in range(max_steps):
            following = current * growth
            if f(following) >= f(current):
                return previous, current, following, following
            previous, current = current, following
        return previous, current, None, None
    current = start  # no reduction at start: shrink until the loss falls below base
    for _ in range(max_steps):
        smaller = current / growth
        if f(smaller) < base:
            return 0.0, smaller, current, current
        current = smaller
    return 0.0, current, None, start


def landscape_search(loss_fn: LossFn, params: Mapping[str, Tensor],
                     directions: Mapping[str, Vector] | Directions, *,
                     base: Tensor | None = None, **search: float) -> dict[str, StepSearch]:
    """label -> search_step along v/||v|| from params (keywords as search_step's); weights untouched.

    A zero direction has no landscape: its result is all NaN (evaluations 0).
    """
    check_loss_fn(loss_fn)
    params = check_params(params)
    directions = as_directions(directions, params)
    with torch.no_grad():
        base = base_loss(loss_fn, params) if base is None else base.detach()
        out = {}
        for label, norm in zip(directions.labels, directions.norms.tolist()):
            if norm == 0:
                out[label] = StepSearch(math.nan, math.nan, math.nan, None, math.nan, 0, False)
                continue
            v = directions[label]

            def loss_at(s: float, v: Vector = v, norm: float = norm) -> float:
                return float(loss_fn({n: p + (s / norm) * v[n].to(p.dtype) for n, p in params.items()}))

            out[label] = search_step(loss_at, float(base), **search)
    return out


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0
