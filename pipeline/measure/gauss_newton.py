"""Gauss-Newton smoothness L, robust smoothness ell and their ratio (Pan & Li, App. D, Table 8)."""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

__all__ = ["GN_PARAM_SETS", "gauss_newton_smoothness", "select_parameters"]

DEFAULT_ROW_BUDGET_BYTES = 1 << 30  # per-sample gradient rows held at once (1 GiB)

# The named parameter sets; anything else is a regular expression searched in parameter names.
# "attention": the attention blocks' weight matrices (query/key/value/output projections), the set
# the authors' released code takes the GN matrix over; "all": every trainable parameter.
GN_PARAM_SETS = ("attention", "all")
_ATTENTION = re.compile(r"(^|\.)(attention|attn|self_attn|SelfAttention|EncDecAttention)(\.|$)")


def gauss_newton_smoothness(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    *,
    outlier_factor: float = 4.0,
    params: str = "attention",
    control_seed: int = 0,
    row_budget_bytes: int = DEFAULT_ROW_BUDGET_BYTES,
    return_mask: bool = False,
) -> dict:
    """Spectral norm of the Gauss-Newton Hessian before and after removing outlier coordinates.

    For a two-class classifier, sample i with logits z and p = softmax(z) has the GN row
    g_i = sqrt(p0 p1) (grad z0 - grad z1), because the cross-entropy Hessian in the logits,
    diag(p) - p p^T, equals p0 p1 u u^T with u = (1, -1). With G = [g_1 ... g_n] (P x n),
    L = ||G||_2^2 / n is the top eigenvalue of the GN Hessian (1/n) sum_i J_i^T H_i J_i.
    Coordinates (rows of G) whose norm is >= outlier_factor x the mean row norm are removed
    (paper text: 4; the authors' released code: 2) and ell = ||G_kept||_2^2 / n.

    `params` picks the coordinates (select_parameters): "attention" (default: the attention
    weight matrices, as the authors' code), "all" (every trainable parameter) or a regular
    expression searched in parameter names. The other parameters are held fixed (not coordinates).
    L and ell are divided by n (the mean GN Hessian of the paper's D.2 formula); the authors' code
    takes ||G||^2 without 1/n, so their L and ell are n times ours; L/ell and eps are unaffected.

    Control (the authors' `check_sol`): `ell_random` is the same norm after removing as many
    coordinates as the outlier rule removed, chosen uniformly at random (torch.Generator seeded
    with `control_seed`). Removing any coordinates takes a principal sub-block, so ell <= L always;
    only ell well below ell_random says the outliers carry the bad smoothness.

    Memory grows with P + n^2, not P x n: a first pass accumulates the squared row norms of G
    (one P-sized buffer); a second pass builds the n x n Gram matrices G^T G and
    G_kept^T G_kept from blocks of at most `row_budget_bytes` of per-sample gradients,
    recomputing rows that do not fit. Their eigenvalues give L and ell exactly.

    Returns L, ell, ratio (L / ell; inf when only ell is 0, nan when both are), fraction_removed,
    ell_random, ratio_random (L / ell_random), control_seed, params (the set's name or pattern),
    n_removed, n_params, n_samples, outlier_factor, rows_held, row_evaluations, and with
    `return_mask` also `removed_mask` (parameter name -> bool tensor on the model's device).
    The model is evaluated in eval mode: our choice, so that the GN matrix is a deterministic
    function of the batch (the paper does not say; dropout would make every row a random draw).
    Its modes and weights are left unchanged.
    """
    finite = isinstance(outlier_factor, (int, float)) and math.isfinite(outlier_factor)
    if not (finite and outlier_factor > 0):
        raise ValueError(f"outlier_factor must be a finite number > 0, got {outlier_factor!r}")
    if isinstance(row_budget_bytes, bool) or not isinstance(row_budget_bytes, int) or row_budget_bytes < 0:
        raise ValueError(f"row_budget_bytes must be an int >= 0, got {row_budget_bytes!r}")
    num_labels = getattr(getattr(model, "config", None), "num_labels", 2)
    if num_labels != 2:
        raise ValueError(f"model must be a two-class classifier (config.num_labels == 2), got {num_labels}")
    if isinstance(control_seed, bool) or not isinstance(control_seed, int) or control_seed < 0:
        raise ValueError(f"control_seed must be an int >= 0, got {control_seed!r}")
    inputs, n = _model_inputs(batch)
    param_set = params
    named = select_parameters(model, param_set)

    params = [p for _, p in named]
    n_params = sum(p.numel() for p in params)
    device = params[0].device
    # Rows are kept in at least float32, so that half-precision models still sum squares safely.
    row_dtype = functools.reduce(torch.promote_types, (p.dtype for p in params), torch.float32)
    item = torch.empty((), dtype=row_dtype).element_size()
    rows_held = max(1, min(n, row_budget_bytes // (n_params * item)))

    modes = {m: m.training for m in model.modules()}
    model.eval()  # our choice (docstring): dropout off, so the rows do not depend on a random draw
    try:
        with torch.enable_grad():
            rows = _RowMaker(model, params, inputs, row_dtype, device)
            block = torch.empty(rows_held, n_params, dtype=row_dtype, device=device)  # (b, P)
            sq_norms = torch.zeros(n_params, dtype=row_dtype, device=device)  # sum_i G[c, i]^2
            # Pass 1: squared row norms; the first `rows_held` rows stay for pass 2.
            for i in range(n):
                row = rows.into(i, block[i] if i < rows_held else None)
                sq_norms.addcmul_(row, row)
            row_norms = sq_norms.sqrt_()
            mean_norm = row_norms.mean()
            # `> 0` only matters when G = 0 (mean 0): then nothing is an outlier.
            removed = (row_norms >= outlier_factor * mean_norm) & (row_norms > 0)  # (P,)
            del sq_norms, row_norms
            n_removed = int(removed.sum())
            randomly = _random_mask(n_params, n_removed, control_seed, device)
            gram, gram_kept, gram_random = _gram_matrices(rows, block, [removed, randomly], n)
    finally:
        for module, mode in modes.items():
            module.train(mode)

    L = _top_eigenvalue(gram) / n
    ell = _top_eigenvalue(gram_kept) / n
    ell_random = _top_eigenvalue(gram_random) / n
    result = {
        "L": L,
        "ell": ell,
        "ratio": _ratio(L, ell),
        "fraction_removed": n_removed / n_params,
        "ell_random": ell_random,
        "ratio_random": _ratio(L, ell_random),
        "control_seed": control_seed,
        "params": param_set,
        "n_removed": n_removed,
        "n_params": n_params,
        "n_samples": n,
        "outlier_factor": float(outlier_factor),
        "rows_held": rows_held,
        "row_evaluations": rows.evaluations,
    }
    if return_mask:
        parts = removed.split([p.numel() for p in params])
        result["removed_mask"] = {name: part.view_as(p) for (name, p), part in zip(named, parts)}
    return result


class _RowMaker:
    """Computes the flattened GN row g_i of one sample, one forward and one backward each."""

    def __init__(self, model: nn.Module, params: list[Tensor], inputs: dict[str, Tensor], dtype, device):
        self.model, self.params, self.inputs = model, params, inputs
        self.dtype, self.device = dtype, device
        self.n_params = sum(p.numel() for p in params)
        self.evaluations = 0

    def into(self, i: int, out: Tensor | None = None) -> Tensor:
        """Write g_i into `out` (a P-sized buffer) or a new tensor, and return it."""
        sample = {k: v[i : i + 1] for k, v in self.inputs.items()}  # loop, not vmap: docs/data.md
        logits = self.model(**sample).logits  # (1, 2)
        if logits.shape != (1, 2):
            raise ValueError(f"model must output two logits per sample, got shape {tuple(logits.shape)}")
        z = logits[0]
        prob = torch.softmax(z.detach().double(), dim=0)
        weight = float((prob[0] * prob[1]).sqrt())
        # Differentiating the scalar sqrt(p0 p1) (z0 - z1), weight held constant, gives g_i.
        grads = torch.autograd.grad(weight * (z[0] - z[1]), self.params, allow_unused=True)
        if out is None:
            out = torch.empty(self.n_params, dtype=self.dtype, device=self.device)
        offset = 0
        for p, g in zip(self.params, grads):
            part = out[offset : offset + p.numel()]
            if g is None:  # parameter not on this sample's path (e.g. an unused head)
                part.zero_()
            else:
                part.copy_(g.reshape(-1))
            offset += p.numel()
        self.evaluations += 1
        return out


def select_parameters(model: nn.Module, params: str) -> list[tuple[str, Tensor]]:
    """The trainable (name, parameter) pairs of a GN parameter set (see gauss_newton_smoothness)."""
    if not isinstance(params, str) or not params:
        raise ValueError(f"params must be 'attention', 'all' or a name pattern, got {params!r}")
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if params == "all":
        chosen = trainable
    elif params == "attention":
        chosen = [(name, p) for name, p in trainable if p.dim() == 2 and _ATTENTION.search(name)]
    else:
        try:
            pattern = re.compile(params)
        except re.error as err:
            raise ValueError(f"params: {params!r} is not a valid regular expression ({err})") from None
        chosen = [(name, p) for name, p in trainable if pattern.search(name)]
    if not chosen:
        raise ValueError(f"params: no trainable parameter (requires_grad=True) matches {params!r}")
    return chosen


def _random_mask(n_params: int, count: int, seed: int, device) -> Tensor:
    """`count` of `n_params` coordinates drawn uniformly without replacement (CPU generator: the
    same draw on every device)."""
    chosen = torch.randperm(n_params, generator=torch.Generator().manual_seed(seed))[:count]
    mask = torch.zeros(n_params, dtype=torch.bool)
    mask[chosen] = True
    return mask.to(device)


def _gram_matrices(rows: _RowMaker, block: Tensor, masks: list[Tensor], n: int) -> list[Tensor]:
    """K = G^T G and, per mask, K_m = G^T diag(~mask) G (n x n, float64); `block` holds rows 0..b-1."""
    gram = torch.zeros(n, n, dtype=torch.float64, device=block.device)
    grams_kept = [torch.zeros_like(gram) for _ in masks]
    for start, held in _blocks(rows, block, n):
        idx, end = slice(start, start + held), start + held
        chunk = block[:held]  # (h, P)
        # This block against its own rows, then against every later row (recomputed, one at a time).
        later = itertools.chain((chunk[r] for r in range(held)), (rows.into(j) for j in range(end, n)))
        for j, row in enumerate(later, start=start):
            gram[idx, j] = torch.mv(chunk, row).double()
            # Zero the removed coordinates of the row rather than subtract their products from K:
            # with L / ell in the thousands, K - K_removed would cancel away float32 precision.
            # In place (cheapest) only for the last mask of a recomputed row; held rows and
            # earlier masks need the row intact.
            for m, (removed, gram_kept) in enumerate(zip(masks, grams_kept)):
                last = m == len(masks) - 1 and j >= end
                masked = row.masked_fill_(removed, 0) if last else row.masked_fill(removed, 0)
                gram_kept[idx, j] = torch.mv(chunk, masked).double()
    # Only blocks on and above the diagonal were filled: mirror them.
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=gram.device))
    return [_symmetric(g, upper) for g in (gram, *grams_kept)]


def _blocks(rows: _RowMaker, block: Tensor, n: int) -> Iterator[tuple[int, int]]:
    """Yield (start, count) per block of rows, filling `block` by recomputation after the first."""
    size = block.shape[0]
    for start in range(0, n, size):
        held = min(size, n - start)
        if start > 0:
            for r in range(held):
                rows.into(start + r, block[r])
        yield start, held


def _symmetric(upper_filled: Tensor, upper: Tensor) -> Tensor:
    return torch.where(upper, upper_filled, upper_filled.T)


def _top_eigenvalue(gram: Tensor) -> float:
    return float(torch.linalg.eigvalsh(gram.cpu())[-1].clamp_min(0.0))  # PSD: clamp rounding below 0


def _ratio(L: float, ell: float) -> float:
    if ell > 0:
        return L / ell
    return math.nan if L == 0 else math.inf


def _model_inputs(batch: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], int]:
    """The batch's model inputs (labels dropped: the GN rows do not use them) and its size."""
    if not isinstance(batch, Mapping):
        raise ValueError(f"batch must be a dict of input tensors, got {type(batch).__name__}")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if not inputs or not all(isinstance(v, Tensor) and v.dim() >= 1 for v in inputs.values()):
        raise ValueError(f"batch must map input names to batched tensors, got keys {sorted(batch)}")
    sizes = {k: v.shape[0] for k, v in inputs.items()}
    n = next(iter(sizes.values()))
    if n < 1 or any(s != n for s in sizes.values()):
        raise ValueError(f"batch tensors must share a batch size >= 1, got sizes {sizes}")
    return inputs, n
