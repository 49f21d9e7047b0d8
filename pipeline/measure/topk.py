"""The share of a direction's sharpness carried by its largest coordinates (Pan & Li, Secs. 3.2, 4.1).

The paper observes that a small fraction of SGD's update coordinates carries most of its
directional sharpness; the authors check it by masking the top-k% coordinates (by |v_i|) of
SGD's update and comparing the sharpness of the masked direction with the full one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from pipeline.measure.sharpness import directional_sharpness
from pipeline.measure.vectors import LossFn, Vector, check_directions, check_params


def topk_sharpness_share(loss_fn: LossFn, params: Mapping[str, Tensor], direction: Mapping[str, Tensor],
                         fractions: Sequence[float], *, method: str = "auto",
                         chunk_size: int | None = None) -> list[dict[str, float]]:
    """Per fraction k: the sharpness of v with its top ceil(k P) coordinates by |v_i| zeroed.

    With v_top the top coordinates (the rest zero), v_rest = v - v_top and H the Hessian of
    loss_fn at params, each row holds: `topk_fraction` k, `n_masked` ceil(k P) (P coordinates
    over every tensor of v), `sharpness` v^T H v / ||v||^2, `sharpness_masked` v_rest^T H v_rest /
    ||v_rest||^2 (NaN when nothing is left), `sharpness_share` 1 - v_rest^T H v_rest / v^T H v
    (the share of the unnormalised second-order term, cross terms included, that masking the top
    coordinates removes; NaN when v^T H v = 0) and `norm_share` ||v_top||^2 / ||v||^2.
    Ties at the threshold are broken by torch.topk: exactly ceil(k P) coordinates are masked.
    """
    params = check_params(params)
    v = check_directions({"v": direction}, params, what="direction")["v"]
    if not fractions or not all(isinstance(k, (int, float)) and 0 < k <= 1 for k in fractions):
        raise ValueError(f"fractions must be a non-empty list of numbers in (0, 1], got {fractions!r}")
    names = list(params)
    flat = torch.cat([v[n].reshape(-1) for n in names])
    total = int(flat.numel())
    masked_dirs: dict[str, dict[str, Tensor]] = {}
    counts: list[int] = []
    top_sq: list[float] = []
    for i, k in enumerate(fractions):
        count = min(total, math.ceil(k * total))
        index = torch.topk(flat.abs(), count, sorted=False).indices
        rest = flat.clone()
        rest[index] = 0
        masked_dirs[f"k{i}"] = _unflatten(rest, v, names)
        counts.append(count)
        top_sq.append(float(flat[index].double().pow(2).sum()))
    values = directional_sharpness(loss_fn, params, {"full": v, **masked_dirs}, method=method,
                                   chunk_size=chunk_size)
    norm_sq = float(flat.double().pow(2).sum())
    full = values["full"]
    rows = []
    for i, k in enumerate(fractions):
        rest_sq = norm_sq - top_sq[i]
        masked = values[f"k{i}"] if rest_sq > 0 else math.nan
        quad_rest = masked * rest_sq if rest_sq > 0 else 0.0
        quad_full = full * norm_sq
        rows.append({
            "topk_fraction": float(k),
            "n_masked": counts[i],
            "sharpness": full,
            "sharpness_masked": masked,
            "sharpness_share": 1.0 - quad_rest / quad_full if quad_full != 0 else math.nan,
            "norm_share": top_sq[i] / norm_sq if norm_sq > 0 else math.nan,
        })
    return rows


def _unflatten(flat: Tensor, like: Vector, names: list[str]) -> dict[str, Tensor]:
    parts = flat.split([like[n].numel() for n in names])
    return {n: part.view_as(like[n]) for n, part in zip(names, parts)}
