"""Gauss-Newton smoothness L, robust smoothness ell and their ratio (Pan & Li, App. D, Table 8)."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

__all__ = ["gauss_newton_smoothness"]

DEFAULT_ROW_BUDGET_BYTES = 1 << 30  # per-sample gradient rows held at once (1 GiB)


def gauss_newton_smoothness(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    *,
    outlier_factor: float = 4.0,
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

    Memory grows with P + n^2, not P x n: a first pass accumulates the squared row norms of G
    (one P-sized buffer); a second pass builds the n x n Gram matrices G^T G and
    G_kept^T G_kept from blocks of at most `row_budget_bytes` of per-sample gradients,
    recomputing rows that do not fit. Their eigenvalues give L and ell exactly.

    Returns L, ell, ratio (L / ell; inf when only ell is 0, nan when both are), fraction_removed,
    n_removed, n_params, n_samples, outlier_factor, rows_held, row_evaluations, and with
    `return_mask` also `removed_mask` (parameter name -> bool tensor on the model's device).
    The model is evaluated in eval mode (dropout off); its modes and weights are left unchanged.
    """
    finite = isinstance(outlier_factor, (int, float)) and math.isfinite(outlier_factor)
    if not (finite and outlier_factor > 0):
        raise ValueError(f"outlier_factor must be a finite number > 0, got {outlier_factor!r}")
    if isinstance(row_budget_bytes, bool) or not isinstance(row_budget_bytes, int) or row_budget_bytes < 0:
        raise ValueError(f"row_budget_bytes must be an int >= 0, got {row_budget_bytes!r}")
    num_labels = getattr(getattr(model, "config", None), "num_labels", 2)
    if num_labels != 2:
        raise ValueError(f"model must be a two-class classifier (config.num_labels == 2), got {num_labels}")
    inputs, n = _model_inputs(batch)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("model has no trainable parameters (requires_grad=True)")

    params = [p for _, p in named]
    n_params = sum(p.numel() for p in params)
    device = params[0].device
    # Rows are kept in at least float32, so that half-precision models still sum squares safely.
    row_dtype = functools.reduce(torch.promote_types, (p.dtype for p in params), torch.float32)
    item = torch.empty((), dtype=row_dtype).element_size()
    rows_held = max(1, min(n, row_budget_bytes // (n_params * item)))

    modes = {m: m.training for m in model.modules()}
    model.eval()  # App. D measures the GN matrix of the deterministic network (dropout off)
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
            gram, gram_kept = _gram_matrices(rows, block, removed, n)
    finally:
        for module, mode in modes.items():
            module.train(mode)

    L = _top_eigenvalue(gram) / n
    ell = _top_eigenvalue(gram_kept) / n
    result = {
        "L": L,
        "ell": ell,
        "ratio": _ratio(L, ell),
        "fraction_removed": n_removed / n_params,
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


def _gram_matrices(rows: _RowMaker, block: Tensor, removed: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """K = G^T G and K_kept = G^T diag(~removed) G (n x n, float64); `block` holds rows 0..b-1."""
    gram = torch.zeros(n, n, dtype=torch.float64, device=block.device)
    gram_kept = torch.zeros_like(gram)
    for start, held in _blocks(rows, block, n):
        idx, end = slice(start, start + held), start + held
        chunk = block[:held]  # (h, P)
        # This block against its own rows, then against every later row (recomputed, one at a time).
        later = itertools.chain((chunk[r] for r in range(held)), (rows.into(j) for j in range(end, n)))
        for j, row in enumerate(later, start=start):
            gram[idx, j] = torch.mv(chunk, row).double()
            # Zero the removed coordinates of the row rather than subtract their products from K:
            # with L / ell in the thousands, K - K_removed would cancel away float32 precision.
            # In place (cheapest) except on held rows, which later pairs still need intact.
            masked = row.masked_fill(removed, 0) if j < end else row.masked_fill_(removed, 0)
            gram_kept[idx, j] = torch.mv(chunk, masked).double()
    # Only blocks on and above the diagonal were filled: mirror them.
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=gram.device))
    return _symmetric(gram, upper), _symmetric(gram_kept, upper)


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
