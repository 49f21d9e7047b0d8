"""Vectors in parameter space (name -> tensor): validated params and direction sets, norms, dots."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

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
    """Validates label -> (name -> tensor) against params: same names, shapes and device.

    The tensors come back detached and in the params' dtype (a cast, not a refusal: a float32
    update of bfloat16 weights is measured as the bfloat16 step the weights would take).
    """
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


def unit_tangents(directions: Directions) -> Vector:
    """The v/||v|| stacked in label order: name -> (K, *shape), with the set's own norms.

    A zero direction stays zero (norm 0): callers turn its results into NaN. One stacked copy
    of the directions is made, no other (K copies of the parameter count can be large), and it
    is not kept: only the sharpness needs it.
    """
    labels, norms = directions.labels, directions.norms
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    tangents = {}
    for n in directions[labels[0]]:
        stacked = torch.stack([directions[k][n] for k in labels])  # (K, *shape)
        tangents[n] = stacked.div_(safe.to(stacked.dtype).view(-1, *[1] * (stacked.dim() - 1)))
    return tangents


def stack(vectors: Sequence[Mapping[str, Tensor]]) -> Vector:
    """K vectors -> one vector whose tensors have a leading dimension K."""
    return {n: torch.stack([v[n] for v in vectors]) for n in vectors[0]}


@dataclass(frozen=True, eq=False, repr=False)
class Directions(Mapping):
    """A direction set label -> (name -> tensor), validated once against params, with its norms.

    Made by prepare_directions. Every measurement takes it in place of the raw mapping and then
    neither validates it again nor recomputes a norm: one measurement point validates its
    directions once and computes each ||v|| once. Read-only, like the mapping it stands for; it
    holds the caller's tensors (no copy where the dtypes match), so a set whose tensors change
    in place (the next optimizer step) must be prepared again.
    """

    vectors: Mapping  # label -> (name -> tensor): detached, in the params' dtype and name order
    norms: Tensor  # (K,) float64 on the params' device, in label order (vector_norm of each)
    layout: Mapping[str, tuple]  # name -> (shape, dtype, device) of the params it was checked for

    def __getitem__(self, label: object) -> Mapping[str, Tensor]:
        return self.vectors[label]

    def __iter__(self) -> Iterator:
        return iter(self.vectors)

    def __len__(self) -> int:
        return len(self.vectors)

    # Identity, not Mapping's element-wise ==: comparing tensors that way is ambiguous.
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    @property
    def labels(self) -> list:
        return list(self.vectors)

    def __repr__(self) -> str:
        return f"Directions({len(self)} over {len(self.layout)} tensors: {self.labels})"


def prepare_directions(params: Mapping[str, Tensor],
                       directions: Mapping[str, Mapping[str, Tensor]] | Directions) -> Directions:
    """The direction set validated against params (names, shapes, devices; cast to their dtypes)
    with each ||v|| computed once; a set already prepared for such params comes back as it is."""
    return as_directions(directions, check_params(params))


def as_directions(directions: Mapping | Directions, params: Mapping[str, Tensor],
                  what: str = "directions") -> Directions:
    """`directions` if prepared for params' layout (checked, not re-validated), else prepared now.

    `params` must already have passed check_params.
    """
    layout = _layout(params)
    if isinstance(directions, Directions):
        _check_layout(directions.layout, layout, what)
        return directions
    return _prepared(check_directions(directions, params, what), layout)


def as_direction_set(directions: Mapping | Directions) -> Directions:
    """Like as_directions where no params are given: a raw set is checked against its first entry."""
    if isinstance(directions, Directions):
        return directions
    checked = check_direction_set(directions)
    return _prepared(checked, _layout(next(iter(checked.values()))))


def _prepared(checked: Mapping[object, Vector], layout: Mapping[str, tuple]) -> Directions:
    labels = list(checked)
    # The same expression the measurements used to evaluate each on its own: bit-identical norms.
    norms = torch.stack([vector_norm(checked[k]) for k in labels])  # (K,) float64
    vectors = MappingProxyType({k: MappingProxyType(dict(v)) for k, v in checked.items()})
    return Directions(vectors=vectors, norms=norms, layout=MappingProxyType(dict(layout)))


def _layout(params: Mapping[str, Tensor]) -> dict[str, tuple]:
    return {n: (tuple(p.shape), p.dtype, p.device) for n, p in params.items()}


def _check_layout(prepared: Mapping[str, tuple], given: Mapping[str, tuple], what: str) -> None:
    """One line naming the first difference between the prepared-for params and the given ones."""
    if set(prepared) != set(given):
        missing, extra = sorted(set(prepared) - set(given)), sorted(set(given) - set(prepared))
        raise ValueError(f"{what} were prepared for other params: these lack {missing[:5]} "
                         f"and add {extra[:5]}; prepare them for these params")
    for n, (shape, dtype, device) in prepared.items():
        if given[n] != (shape, dtype, device):
            g_shape, g_dtype, g_device = given[n]
            raise ValueError(f"{what} were prepared for {n!r} of shape {shape}, {dtype} on {device}; "
                             f"these params' is {g_shape}, {g_dtype} on {g_device}")
