"""Directional sharpness v^T H v / ||v||^2 (and its robust variant), gradient correlation, norms.

Pan & Li 2023 (arXiv 2306.00204), section 3: the directional sharpness of an update v at x is
v^T H(x) v / ||v||^2 on a fixed test batch. When it comes out negative the paper also reports
v^T H(x + delta v/||v||) v / ||v||^2 (delta = 0.01), flagged as robust (docs/science.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.measure.hvp import check_chunk_size, check_method, quadratic_forms
from pipeline.measure.vectors import (
    Directions,
    LossFn,
    Vector,
    as_direction_set,
    as_directions,
    check_loss_fn,
    check_params,
    inner,
    unit_tangents,
)


@dataclass(frozen=True)
class SharpnessResult:
    """`value` is what tables report: `raw`, or the robust value when raw < 0 (`robust=True`)."""

    value: float
    raw: float
    robust: bool


def directional_sharpness(loss_fn: LossFn, params: Mapping[str, Tensor],
                          directions: Mapping[str, Vector] | Directions, *, method: str = "auto",
                          chunk_size: int | None = None) -> dict[str, float]:
    """label -> v^T H v / ||v||^2, H the Hessian of loss_fn at params (NaN for a zero v).

    All directions share one primal forward and backward. `method`: "forward_over_reverse"
    (vmapped, the default on accelerators), "double_backward" (the default on the host) or
    "auto"; `chunk_size` bounds how many directions are vmapped at once (None: as many as
    memory allows). See pipeline.measure.hvp. `directions`: a raw mapping label -> (name ->
    tensor), validated here, or a set from prepare_directions, used as it is.
    """
    check_loss_fn(loss_fn)
    check_method(method)
    check_chunk_size(chunk_size)
    params = check_params(params)
    directions = as_directions(directions, params)
    tangents = unit_tangents(directions)
    values = _forms(loss_fn, params, tangents, directions.norms, method, chunk_size)
    return dict(zip(directions, values.tolist()))


def sharpness_with_robust(loss_fn: LossFn, params: Mapping[str, Tensor],
                          directions: Mapping[str, Vector] | Directions, *, delta: float = 0.01,
                          method: str = "auto",
                          chunk_size: int | None = None) -> dict[str, SharpnessResult]:
    """label -> SharpnessResult; negative raw values are re-measured at x + delta v/||v||.

    `directions`, `method` and `chunk_size` as for directional_sharpness.
    """
    check_loss_fn(loss_fn)
    check_method(method)
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be a positive finite number; got {delta!r}")
    check_chunk_size(chunk_size)
    params = check_params(params)
    directions = as_directions(directions, params)
    tangents, norms = unit_tangents(directions), directions.norms
    raw = _forms(loss_fn, params, tangents, norms, method, chunk_size).tolist()
    labels = list(directions)
    negative = [labels[i] for i, r in enumerate(raw) if r < 0]
    robust = _shifted(loss_fn, params, tangents, labels, negative, delta, method, chunk_size)
    return {
        k: SharpnessResult(value=robust.get(k, r), raw=r, robust=k in robust)
        for k, r in zip(labels, raw)
    }


def shifted_sharpness(loss_fn: LossFn, params: Mapping[str, Tensor],
                      directions: Mapping[str, Vector] | Directions, labels: list[str], *,
                      delta: float = 0.01, method: str = "auto",
                      chunk_size: int | None = None) -> dict[str, float]:
    """label -> the paper's Eq. 4 value u^T H(x + delta u) u, u = v/||v||, for the given labels.

    The paper uses it for every direction at a point where SGD's own sharpness is negative
    (App. B.3); sharpness_with_robust uses it for the directions whose raw value is negative.
    """
    check_loss_fn(loss_fn)
    check_method(method)
    params = check_params(params)
    directions = as_directions(directions, params)
    unknown = [k for k in labels if k not in directions]
    if unknown:
        raise ValueError(f"labels: {unknown} are not among the directions {list(directions)}")
    tangents = unit_tangents(directions)
    return _shifted(loss_fn, params, tangents, list(directions), labels, delta, method, chunk_size)


def _shifted(loss_fn: LossFn, params: Vector, tangents: Vector, labels: list[str], chosen: list[str],
             delta: float, method: str, chunk_size: int | None) -> dict[str, float]:
    if not chosen:
        return {}
    device = next(iter(tangents.values())).device
    index = torch.tensor([labels.index(k) for k in chosen], device=device)
    units = {n: t.index_select(0, index) for n, t in tangents.items()}
    shifts = {n: float(delta) * t for n, t in units.items()}
    values = quadratic_forms(loss_fn, params, units, shifts=shifts, method=method, chunk_size=chunk_size)
    return dict(zip(chosen, values.tolist()))


def gradient_correlation(grads: Mapping[str, Tensor],
                         directions: Mapping[str, Vector] | Directions) -> dict[str, float]:
    """label -> -<g, v> / ||v|| (positive when v descends; NaN for a zero v).

    A prepared set must have been prepared for params laid out like `grads`.
    """
    grads = check_params(grads)
    directions = as_directions(directions, grads)
    labels = directions.labels
    dots = torch.stack([inner(grads, directions[k]) for k in labels])
    return dict(zip(labels, (-dots / _nan_if_zero(directions.norms)).tolist()))


def update_norms(directions: Mapping[str, Vector] | Directions) -> dict[str, float]:
    """label -> ||v|| over all of its tensors (a prepared set's own norms)."""
    directions = as_direction_set(directions)
    return dict(zip(directions.labels, directions.norms.tolist()))


def _forms(loss_fn: LossFn, params: Vector, tangents: Vector, norms: Tensor, method: str,
           chunk_size: int | None) -> Tensor:
    """u^T H u for the stacked unit directions, NaN where the direction was zero: (K,) float64."""
    # v^T H v / ||v||^2 = u^T H u with u = v/||v||: tangents of unit size keep float32 in range.
    forms = quadratic_forms(loss_fn, params, tangents, method=method, chunk_size=chunk_size)
    return torch.where(norms > 0, forms, torch.full_like(forms, math.nan))


def _nan_if_zero(x: Tensor) -> Tensor:
    x = x.to(torch.float64)
    return torch.where(x != 0, x, torch.full_like(x, math.nan))
