"""Vectors in parameter space (name -> tensor): validation of params and directions, norms, dots."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

LossFn = Callable[[dict[str, Tensor]], Tensor]
Vector = dict[str, Tensor]  # one point or direction in parameter space: param name -> tensor


def check_params(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The params as a plain dict of detached floating tensors (ValueError otherwise)."""
    if not isinstance(params, Mapping) or not params:
        raise ValueError("params must be a non-empty mapping name -> tensor")
    bad = [n for n, p in params.items() if not (isinstance(p, Tensor) and p.is_floating_point())]
    if bad:
        raise ValueError(f"params must be floating-point tensors; not so for {bad[:5]}")
    return {n: p.detach() for n, p in params.items()}


def check_direction_set(directions: Mapping) -> dict:
    """Validates label -> (name -> tensor) where no params are given: against its first entry."""
    if not isinstance(directions, Mapping) or not directions:
        raise ValueError("directions must be a non-empty mapping label -> (param name -> tensor)")
    first = next(iter(directions.values()))
    if not isinstance(first, Mapping) or not first:
        raise ValueError("directions' values must be non-empty mappings param name -> tensor")
    return check_directions(directions, check_params(first))


def check_directions(directions: Mapping, params: Mapping[str, Tensor],
                     what: str = "directions") -> dict:
    """Validates label -> (name -> tensor) against params: same names, shapes, dtype and device."""
    if not isinstance(directions, Mapping) or not directions:
        raise ValueError(f"{what} must be a non-empty mapping label -> (param name -> tensor)")
    checked = {}
    for label, vec in directions.items():
        if not isinstance(vec, Mapping) or set(vec) != set(params):
            raise ValueError(f"{what}[{label!r}] must map exactly the params' names to tensors")
        for n, p in params.items():
            t = vec[n]
            where = f"{what}[{label!r}][{n!r}]"
            if not isinstance(t, Tensor) or t.shape != p.shape:
                raise ValueError(f"{where} must be a tensor of shape {tuple(p.shape)}")
            if t.device != p.device:
                raise ValueError(f"{where} is on {t.device}; params are on {p.device}")
        checked[label] = {n: vec[n].detach().to(params[n].dtype) for n in params}
    return checked


def check_loss_fn(loss_fn: object) -> None:
    if not callable(loss_fn):
        raise ValueError("loss_fn must be a callable params_dict -> scalar tensor")


def vector_norm(vec: Mapping[str, Tensor]) -> Tensor:
    """||v|| over all tensors, accumulated in float64 (0-dim, on the tensors' device)."""
    norms = torch.stack([torch.linalg.vector_norm(t, dtype=torch.float64) for t in vec.values()])
    return torch.linalg.vector_norm(norms)


def inner(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    """<a, b> over all tensors, each tensor's dot accumulated in float64 (0-dim)."""
    return torch.stack([(a[n] * b[n]).sum(dtype=torch.float64) for n in a]).sum()


def unit_tangents(directions: Mapping[str, Vector]) -> tuple[Vector, Tensor]:
    """(the v/||v|| stacked: name -> (K, *shape), the norms (K,) float64) in label order.

    A zero direction stays zero (norm 0): callers turn its results into NaN. One stacked copy
    of the directions is made, no other (K copies of the parameter count can be large).
    """
    labels = list(directions)
    norms = torch.stack([vector_norm(directions[k]) for k in labels])  # (K,)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    tangents = {}
    for n in directions[labels[0]]:
        stacked = torch.stack([directions[k][n] for k in labels])  # (K, *shape)
        tangents[n] = stacked.div_(safe.to(stacked.dtype).view(-1, *[1] * (stacked.dim() - 1)))
    return tangents, norms


def stack(vectors: Sequence[Mapping[str, Tensor]]) -> Vector:
    """K vectors -> one vector whose tensors have a leading dimension K."""
    return {n: torch.stack([v[n] for v in vectors]) for n in vectors[0]}
