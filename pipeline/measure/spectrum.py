"""Curvature beyond the paper: top Hessian eigenvalue, Hutchinson diagonal, rank correlation.

Pan & Li 2023 (arXiv 2306.00204), section 4.2 conjecture: the absolute values of gradient
coordinates and of Hessian coordinates are *positively* correlated - large gradient coordinates
sit where the curvature is large - so SGD, which steps furthest along its largest gradient
coordinates, steps along sharp coordinates, while Adam's coordinate-wise scaling (and clipping)
shrinks exactly those steps and lowers the directional sharpness. These measurements test that
(|g_i| vs |H_ii| rank correlation, positive if the conjecture holds) and put the global
sharpness, the top Hessian eigenvalue, beside the directional sharpness (docs/science.md, 'Beyond
the paper: curvature').

The Hutchinson diagonal is noisy where coordinates couple: a coordinate's sample variance is
sum_{j != i} H_ij^2, which on transformers dwarfs H_ii^2 (on a 1,904-parameter GPT-Neo the median
|H_ii| was 0.6% of that off-diagonal norm). `hutchinson_noise` summarises the standard error so
that a correlation can be read against it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.measure.hvp import (
    check_chunk_size,
    check_method,
    hessian_vector_products,
    hvp_operator,
)
from pipeline.measure.vectors import LossFn, check_loss_fn, check_params


@dataclass(frozen=True)
class EigenResult:
    """Top eigenvalue estimate; `residual` = ||H y - value y|| / |value| for the Ritz vector y."""

    value: float
    converged: bool  # residual <= tol (or the Krylov space was exhausted)
    iters: int  # Hessian-vector products used
    residual: float
    tol: float


def top_hessian_eigenvalue(loss_fn: LossFn, params: Mapping[str, Tensor], *, iters: int = 20,
                           tol: float = 1e-3,
                           generator: torch.Generator | None = None) -> EigenResult:
    """Largest (algebraic) Hessian eigenvalue by Lanczos with full reorthogonalisation.

    Stops once the relative residual of the top Ritz pair is at most `tol`, or after `iters`
    products. Memory: `iters` vectors of the parameter count (the Krylov basis).
    """
    check_loss_fn(loss_fn)
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
        raise ValueError(f"iters must be a positive int; got {iters!r}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive finite number; got {tol!r}")
    params = check_params(params)
    names = list(params)
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    first = params[names[0]]
    device, dtype, dim = first.device, first.dtype, sum(sizes)
    steps = min(iters, dim)  # a Krylov space cannot outgrow the dimension
    gen = _generator_on(generator, device)
    hvp = hvp_operator(loss_fn, params)

    def apply(q: Tensor) -> Tensor:  # flat -> flat, through the name -> tensor interface
        parts = {n: x.view(s) for n, x, s in zip(names, q.split(sizes), shapes)}
        out = hvp(parts)
        return torch.cat([out[n].reshape(-1) for n in names])

    start = torch.randn(dim, generator=gen, device=device, dtype=dtype)
    basis = [start / torch.linalg.vector_norm(start)]  # the Krylov basis, grown as needed
    alphas: list[float] = []
    betas: list[float] = []
    theta, residual, converged = math.nan, math.inf, False
    for j in range(steps):
        w = apply(basis[j])
        alpha = torch.dot(basis[j], w)
        w = w - alpha * basis[j]
        if j > 0:
            w = w - betas[-1] * basis[j - 1]
        for _ in range(2):  # full reorthogonalisation, twice is enough (Parlett's "twice")
            for q in basis:
                w = w - torch.dot(q, w) * q
        beta = float(torch.linalg.vector_norm(w, dtype=torch.float64))
        alphas.append(float(alpha))
        theta, residual = _top_ritz(alphas, betas, beta)
        # beta ~ 0: the Krylov space is invariant, its Ritz values are exact eigenvalues.
        exhausted = beta <= 10 * torch.finfo(dtype).eps * max(abs(a) for a in alphas)
        converged = residual <= tol or exhausted
        if converged or j + 1 == steps:
            break
        betas.append(beta)
        basis.append(w / beta)
    return EigenResult(value=theta, converged=converged, iters=len(alphas), residual=residual,
                       tol=tol)


def _top_ritz(alphas: list[float], betas: list[float], beta_next: float) -> tuple[float, float]:
    """Top eigenvalue of the Lanczos tridiagonal and its relative residual |beta s_m| / |theta|."""
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    values, vectors = torch.linalg.eigh(t)
    theta = float(values[-1])
    scale = abs(theta) if theta != 0 else 1.0
    return theta, abs(beta_next * float(vectors[-1, -1])) / scale


def hutchinson_diagonal(loss_fn: LossFn, params: Mapping[str, Tensor], *, samples: int,
                        generator: torch.Generator | None = None, method: str = "auto",
                        chunk_size: int | None = None) -> dict[str, Tensor]:
    """Estimate of diag(H): mean over Rademacher z of z * Hz (Bekas, Kokiopoulou & Saad 2007)."""
    return hutchinson_diagonal_with_error(loss_fn, params, samples=samples, generator=generator,
                                          method=method, chunk_size=chunk_size)[0]


def hutchinson_diagonal_with_error(
    loss_fn: LossFn, params: Mapping[str, Tensor], *, samples: int,
    generator: torch.Generator | None = None, method: str = "auto", chunk_size: int | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(estimate of diag(H), its standard error per coordinate: sample std / sqrt(samples)).

    Each coordinate's sample z_i (Hz)_i = H_ii + sum_{j != i} H_ij z_i z_j has variance
    sum_{j != i} H_ij^2: exact for a diagonal Hessian, noisy where coordinates couple.
    `chunk_size` bounds how many samples are in flight at once (None: all); `method` is the
    Hessian-vector product's (pipeline.measure.hvp). The draws are the same whatever the chunk
    size: sample by sample, parameter by parameter.
    """
    check_loss_fn(loss_fn)
    check_method(method)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 2:
        raise ValueError(f"samples must be an int >= 2 (the error needs two); got {samples!r}")
    check_chunk_size(chunk_size)
    params = check_params(params)
    device = next(iter(params.values())).device
    gen = _generator_on(generator, device)
    total = {n: torch.zeros(p.shape, dtype=torch.float64, device=device) for n, p in params.items()}
    squares = {n: torch.zeros_like(t) for n, t in total.items()}
    step = chunk_size or samples
    for begin in range(0, samples, step):
        count = min(step, samples - begin)
        draws = [{n: _rademacher(p, gen) for n, p in params.items()} for _ in range(count)]
        z = {n: torch.stack([d[n] for d in draws]) for n in params}  # name -> (c, *shape)
        hz = hessian_vector_products(loss_fn, params, z, method=method)
        for n in params:
            product = (z[n] * hz[n]).to(torch.float64)  # (c, *shape)
            total[n] += product.sum(0)
            squares[n] += product.pow(2).sum(0)
    mean = {n: total[n] / samples for n in params}
    stderr = {
        n: ((squares[n] - samples * mean[n].pow(2)).clamp_min(0) / (samples - 1) / samples).sqrt()
        for n in params
    }
    return ({n: mean[n].to(params[n].dtype) for n in params},
            {n: stderr[n].to(params[n].dtype) for n in params})


def rank_correlation(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two equally long tensors (ties get their average rank).

    NaN when either side is constant or has fewer than two elements (undefined correlation).
    """
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.numel() != b.numel():
        raise ValueError("a and b must be tensors with the same number of elements")
    if a.numel() < 2:
        return math.nan
    ra, rb = _average_ranks(a.reshape(-1)), _average_ranks(b.reshape(-1))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = torch.linalg.vector_norm(ra) * torch.linalg.vector_norm(rb)
    return float(torch.where(denominator > 0, (ra * rb).sum() / denominator,
                             torch.full_like(denominator, math.nan)))


def gradient_curvature_correlation(grads: Mapping[str, Tensor], diagonal: Mapping[str, Tensor],
                                   *, topk_fraction: float) -> dict[str, float]:
    """Rank correlation of |g_i| with |H_ii| over all coordinates (`all`) and over the top
    `topk_fraction` of coordinates by |g_i| (`topk`): paper section 4.2's conjecture."""
    if not (isinstance(topk_fraction, (int, float)) and 0 < topk_fraction <= 1):
        raise ValueError(f"topk_fraction must be in (0, 1]; got {topk_fraction!r}")
    grads = check_params(grads)
    if not isinstance(diagonal, Mapping) or set(diagonal) != set(grads):
        raise ValueError("diagonal must map exactly the gradients' names to tensors")
    g = torch.cat([grads[n].reshape(-1) for n in grads]).abs()
    h = torch.cat([diagonal[n].reshape(-1) for n in grads]).abs()
    if g.numel() != h.numel():
        raise ValueError("diagonal's tensors must have the gradients' shapes")
    k = max(2, math.ceil(topk_fraction * g.numel()))
    top = torch.topk(g, min(k, g.numel())).indices
    return {"all": rank_correlation(g, h), "topk": rank_correlation(g[top], h[top])}


def _average_ranks(x: Tensor) -> Tensor:
    """1-based ranks of x (float64) with tied values sharing the mean of their positions."""
    ordered, order = torch.sort(x)
    _, inverse, counts = torch.unique_consecutive(ordered, return_inverse=True,
                                                  return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)  # 1-based position of each group's last member
    group_rank = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty(x.shape, dtype=torch.float64, device=x.device)
    ranks[order] = group_rank[inverse]
    return ranks


def _rademacher(like: Tensor, generator: torch.Generator) -> Tensor:
    draw = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
    return (2 * draw - 1).to(like.dtype)


def _generator_on(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """A generator on the params' device: the given one, or one seeded from it (no host copies of
    random tensors); None means a fresh generator seeded 0, so results are reproducible."""
    if generator is None:
        return torch.Generator(device=device).manual_seed(0)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None; got {type(generator)}")
    if generator.device.type == device.type and (
        device.type == "cpu" or generator.device.index in (device.index, None)
    ):
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def hutchinson_noise(diagonal: Mapping[str, Tensor], stderr: Mapping[str, Tensor]) -> dict[str, float]:
    """How much of a Hutchinson diagonal is sampling noise (hutchinson_diagonal_with_error's output).

    `rel_stderr` = ||stderr||_2 / ||estimate||_2 over all coordinates (NaN for a zero estimate);
    `resolved` = the share of coordinates whose |estimate| exceeds twice its standard error.
    """
    if not isinstance(diagonal, Mapping) or not isinstance(stderr, Mapping) or set(diagonal) != set(stderr):
        raise ValueError("diagonal and stderr must map the same names to tensors")
    d = torch.cat([diagonal[n].reshape(-1).to(torch.float64) for n in diagonal])
    e = torch.cat([stderr[n].reshape(-1).to(torch.float64) for n in diagonal])
    if d.shape != e.shape:
        raise ValueError("diagonal and stderr must have the same shapes")
    norm = float(torch.linalg.vector_norm(d))
    rel = float(torch.linalg.vector_norm(e)) / norm if norm > 0 else math.nan
    return {"rel_stderr": rel, "resolved": float((d.abs() > 2 * e).to(torch.float64).mean())}
