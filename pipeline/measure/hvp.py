"""Hessian-vector products of a functional loss, sharing the work across directions.

Pan & Li 2023 (arXiv 2306.00204) measure v^T H v with Hessian-vector products, one direction at
a time (torch.autograd.functional.vhp: a fresh forward, backward and double backward each). Two
exact methods share the primal work instead:

- "forward_over_reverse": forward-mode AD of the gradient (torch.func.jvp of torch.func.grad),
  vmapped over the stacked directions: the primal forward and backward run once per chunk and
  only the tangents are batched. The default on accelerators, where one batched launch
  replaces K small ones.
- "double_backward": the gradient graph is built once (create_graph) and each direction costs
  one more backward through it. The default on the host: vmapped tangents are K times larger
  tensors, and there their memory traffic and page faults cost more than the batching saves
  (benchmarks/bench_sharpness.py).

Nested forward mode (forward-over-forward) would be cheaper for a scalar v^T H v, but it
silently returns wrong second derivatives through layer_norm and batch_norm (pytorch issues
#196700, #196699); both methods here agree with a brute-force Hessian through those layers and
with each other on the real workload models (tests/measure). Second derivatives need eager
attention: fused SDPA kernels have neither double backward nor forward-mode AD (docs/data.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from pipeline.measure.chunking import chunked, default_chunk_size
from pipeline.measure.vectors import LossFn, Vector, inner

METHODS = ("auto", "forward_over_reverse", "double_backward")


def check_method(method: object) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")


def resolve_method(method: str, params: Mapping[str, Tensor]) -> str:
    """The method "auto" stands for on the params' device (see the module docstring)."""
    check_method(method)
    if method != "auto":
        return method
    device = next(iter(params.values())).device
    return "double_backward" if device.type == "cpu" else "forward_over_reverse"


def hessian_vector_products(loss_fn: LossFn, params: Mapping[str, Tensor], tangents: Vector,
                            *, chunk_size: int | None = None, method: str = "auto") -> Vector:
    """H t_k for stacked tangents (name -> (K, *shape)); returns name -> (K, *shape).

    `chunk_size` bounds how many tangents forward-over-reverse vmaps at once (None: as many as
    memory allows, see pipeline.measure.chunking); double backward takes one at a time.
    """
    check_chunk_size(chunk_size)
    if resolve_method(method, params) == "double_backward":
        apply = hvp_operator(loss_fn, params)
        products = [apply(_take(tangents, k)) for k in range(_count(tangents))]
        return {n: torch.stack([h[n] for h in products]) for n in tangents}
    gradient = grad(loss_fn)
    base = dict(params)

    def one(t: Vector) -> Vector:
        return jvp(gradient, (base,), (t,))[1]

    run = lambda size: vmap(one, chunk_size=size)(tangents)  # noqa: E731
    return _run_chunked(run, loss_fn, params, _count(tangents), chunk_size)


def quadratic_forms(loss_fn: LossFn, params: Mapping[str, Tensor], tangents: Vector,
                    *, shifts: Vector | None = None, chunk_size: int | None = None,
                    method: str = "auto") -> Tensor:
    """t_k^T H(x + s_k) t_k for stacked tangents t (and optional stacked shifts s): (K,) float64.

    Without shifts the Hessian is at x for all k and the primal work is shared; with shifts each
    k has its own point (the robust sharpness), so each k pays for its own primal.
    """
    check_chunk_size(chunk_size)
    if resolve_method(method, params) == "double_backward":
        shared = hvp_operator(loss_fn, params) if shifts is None else None
        forms = []
        for k in range(_count(tangents)):
            t = _take(tangents, k)
            if shared is None:  # the robust sharpness: a graph at this direction's own point
                point = {n: x + shifts[n][k] for n, x in params.items()}
            apply = shared or hvp_operator(loss_fn, point)
            forms.append(inner(t, apply(t)))
        return torch.stack(forms)
    gradient = grad(loss_fn)
    base = dict(params)

    def one(t: Vector, s: Vector | None) -> Tensor:
        x = base if s is None else {n: base[n] + s[n] for n in base}
        ht = jvp(gradient, (x,), (t,))[1]
        return inner(t, ht)

    in_dims = (0, None if shifts is None else 0)
    run = lambda size: vmap(one, in_dims=in_dims, chunk_size=size)(tangents, shifts)  # noqa: E731
    return _run_chunked(run, loss_fn, params, _count(tangents), chunk_size)


def _count(stacked: Vector) -> int:
    return int(next(iter(stacked.values())).shape[0])


def _take(stacked: Vector, k: int) -> Vector:
    return {n: t[k] for n, t in stacked.items()}


def check_chunk_size(chunk_size: object) -> None:
    if chunk_size is not None and (
        not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}")


def _run_chunked(run: Callable[[int | None], Tensor | Vector], loss_fn: LossFn,
                 params: Mapping[str, Tensor], count: int, chunk_size: int | None):
    if chunk_size is None:
        chunk_size = default_chunk_size(loss_fn, params, count)
    return chunked(run, count, chunk_size)


def hvp_operator(loss_fn: LossFn, params: Mapping[str, Tensor]) -> Callable[[Vector], Vector]:
    """v -> H v at params for one v at a time, sharing one retained gradient graph.

    For sequential products (Lanczos, the "double_backward" method) a graph built once is
    cheaper than forward-over-reverse, which would redo the primal forward and backward.
    """
    live = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(live), list(live.values()), create_graph=True,
                                    allow_unused=True)
    # A gradient that does not depend on the weights (loss linear in them, or a weight the loss
    # never uses) has a zero Hessian block and no graph; autograd.grad refuses such outputs.
    linked = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    inputs = list(live.values())

    def apply(v: Mapping[str, Tensor]) -> Vector:
        vs = [v[n] for n in live]
        hv = [None] * len(inputs)
        if linked:
            hv = torch.autograd.grad([grads[i] for i in linked], inputs,
                                     grad_outputs=[vs[i] for i in linked],
                                     retain_graph=True, allow_unused=True)
        return {n: torch.zeros_like(p) if h is None else h.detach()
                for (n, p), h in zip(live.items(), hv)}

    return apply
