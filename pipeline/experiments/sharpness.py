"""The sharpness experiment (paper Sec. 3, Tables 1/4-7, Figs. 1-3): probe directions along a trajectory.

One training optimizer (SGD-momentum or Adam) moves the weights. Every step's minibatch gradient
is also fed to the probe bank; at the scheduled steps each probe's current update is a direction
whose directional sharpness, gradient correlation, 1-D landscape (a grid and a per-probe step
search) and coordinate histogram are measured on the fixed measurement batch (`measure.batch`:
training examples by default, as the paper's App. B; model in eval mode), with the weights where
the step's gradient was taken, and the share of SGD's sharpness carried by its top-k coordinates.
Optionally the curvature beyond the paper (Sec. 4.2 conjecture)
is measured at the same points: the top Hessian eigenvalue and the rank correlation of |g_i|
with |H_ii|.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from pipeline.config import Measure, Trial
from pipeline.experiments.common import Records, Reporter, named_trainable
from pipeline.experiments.loop import Diverged, run_with
from pipeline.measure import (
    base_loss,
    gradient_correlation,
    gradient_curvature_correlation,
    hutchinson_diagonal_with_error,
    hutchinson_noise,
    landscape_search,
    loss_landscape,
    prepare_directions,
    sharpness_with_robust,
    shifted_sharpness,
    top_hessian_eigenvalue,
    topk_sharpness_share,
    update_histogram,
    update_norms,
)
from pipeline.optim import ProbeBank, ProbeSpec
from pipeline.workloads import Workload


class SharpnessHook:
    """Feeds every minibatch gradient to the probe bank; measures its directions at the schedule."""

    wants_last_gradient = True  # the probes' directions at the last point include its gradient

    def __init__(self, trial: Trial, workload: Workload, generator: torch.Generator) -> None:
        self.measure = trial.measure
        self.generator = generator
        self.model = workload.model
        self.params = named_trainable(self.model)
        self.bank = ProbeBank({n: p.detach() for n, p in self.params.items()}, self.measure.probes)
        batches = workload.measurement_batches(self.measure.batch, self.measure.batch_size,
                                               self.measure.sub_batch_size)
        self.measure_loss = workload.loss_fn(batches)
        self.schedule = set(self.measure.steps(trial.steps))
        self.tables: Records = {"sharpness": [], "landscape": [], "histogram": [], "topk_share": [],
                                "landscape_summary": []}
        if self.measure.curvature:
            self.tables["curvature"] = []

    def on_gradient(self, step: int, grads) -> None:
        self.bank.step(grads, {n: p.detach() for n, p in self.params.items()})

    def at_step(self, step: int, train_loss: float | None) -> dict[str, float]:
        if step not in self.schedule:
            return {}
        self.model.eval()
        point = measure_point(self.measure_loss, self.params, self.bank, self.measure, self.generator)
        for table, rows in point.items():
            self.tables[table].extend({"step": step, **row} for row in rows)
        sharpness = point["sharpness"]
        return ({f"sharpness/{r['probe']}": r["sharpness"] for r in sharpness}
                | {f"ratio_to_sgd/{r['probe']}": r["ratio_to_sgd"] for r in sharpness
                   if r["ratio_to_sgd"] is not None}
                | {f"clip_tau/{r['probe']}": r["clip_tau"] for r in sharpness if r["clip_tau"] is not None}
                | {"grad_zero_fraction": sharpness[0]["grad_zero_fraction"]})

    def records(self) -> Records:
        return self.tables


def run(trial: Trial, report: Reporter) -> Records:
    """Trains along one trajectory and measures every probe direction at the scheduled steps."""
    return run_with(trial, report, SharpnessHook)


def measure_point(
    loss_fn,
    live_params: Mapping[str, torch.Tensor],
    bank: ProbeBank,
    measure: Measure,
    generator: torch.Generator,
) -> Records:
    """All the measurements at one point of the trajectory, as rows without the step column."""
    params = {n: p.detach() for n, p in live_params.items()}
    directions = prepare_directions(params, bank.directions())  # validated once, norms computed once
    sharp = sharpness_with_robust(loss_fn, params, directions, delta=measure.robust_delta)
    # The landscape and the sharpness are on the measurement batch, so the first-order term of
    # the loss change along v is that batch's gradient: that is the correlation we report.
    batch_grad = torch.func.grad(loss_fn)(params)
    if not all(bool(torch.isfinite(g).all()) for g in batch_grad.values()):
        raise Diverged("the measurement-batch gradient is not finite")
    correlation = gradient_correlation(batch_grad, directions)
    norms = update_norms(directions)
    diagnostics = bank.diagnostics()
    # Null (not NaN) where there is nothing to divide by: no SGD probe, or a zero SGD sharpness.
    sgd_value = sharp["sgd"].value if "sgd" in sharp else 0.0
    shifted, paper_ratio = _paper_ratios(loss_fn, params, directions, sharp, measure.robust_delta)
    by_label: dict[str, ProbeSpec] = {s.label: s for s in measure.probes}
    batch = {"measure_batch": measure.batch, "measure_batch_size": measure.batch_size,
             "measure_sub_batch_size": measure.sub_batch_size or measure.batch_size}
    sharpness_rows = [
        {
            "probe": label,
            "probe_algorithm": by_label[label].algorithm,
            "probe_clip_fraction": by_label[label].clip_fraction,
            "probe_clip_target": by_label[label].clip_target,
            "sharpness": result.value,
            "sharpness_raw": result.raw,
            "robust": bool(result.robust),
            "ratio_to_sgd": result.value / sgd_value if sgd_value else None,
            "grad_correlation": correlation[label],
            "update_norm": norms[label],
            "sharpness_shifted": shifted.get(label),
            "ratio_to_sgd_paper": paper_ratio.get(label),
            "clip_tau": diagnostics["clip_tau"][label],
            "grad_zero_fraction": diagnostics["grad_zero_fraction"],
            **batch,
        }
        for label, result in sharp.items()
    ]
    offsets = list(measure.landscape_offsets)
    base = base_loss(loss_fn, params)
    with torch.no_grad():
        curves = loss_landscape(loss_fn, params, directions, offsets, base=base)
    landscape_rows = [
        {"probe": label, "offset": s, "loss": loss, "loss_change": loss - float(base)}
        for label, losses in curves.items()
        for s, loss in zip(offsets, losses)
    ]
    share_rows = []
    if "sgd" in directions and measure.share_fractions:
        share_rows = [{"probe": "sgd", **row} for row in
                      topk_sharpness_share(loss_fn, params, directions["sgd"], list(measure.share_fractions))]
    point: Records = {
        "sharpness": sharpness_rows,
        "landscape": landscape_rows,
        "histogram": histogram_rows(directions, measure),
        "topk_share": share_rows,
        "landscape_summary": search_rows(loss_fn, params, directions, base, measure) if measure.landscape_search
        else [],
    }
    if measure.curvature:
        point["curvature"] = [curvature_row(loss_fn, params, batch_grad, measure, generator)]
    return point


def _paper_ratios(loss_fn, params, directions, sharp, delta: float) -> tuple[dict, dict]:
    """(label -> Eq. 4 value where taken, label -> the paper's ratio to SGD).

    The paper (App. B.3) divides raw by raw, and only at a point where SGD's own sharpness is
    negative takes every direction's sharpness at the shifted point (Eq. 4). Our `ratio_to_sgd`
    instead divides each probe's robust-or-raw value by SGD's.
    """
    shifted = {k: r.value for k, r in sharp.items() if r.robust}
    if "sgd" not in sharp:
        return shifted, {}
    sgd_raw = sharp["sgd"].raw
    if sgd_raw < 0:
        missing = [k for k in sharp if k not in shifted]
        shifted |= shifted_sharpness(loss_fn, params, directions, missing, delta=delta)
        base, tops = shifted["sgd"], shifted
    else:
        base, tops = sgd_raw, {k: r.raw for k, r in sharp.items()}
    ratios = {k: v / base for k, v in tops.items()} if base != 0 and math.isfinite(base) else {}
    return shifted, ratios


def histogram_rows(directions, measure: Measure) -> list[dict[str, Any]]:
    """The paper's Fig. 1 bins per probe; coordinates outside the range in two open-ended rows."""
    histograms = update_histogram(directions, bins=measure.histogram_bins, lo=measure.histogram_lo,
                                  hi=measure.histogram_hi, scale=measure.histogram_scale)
    rows = []
    for label, h in histograms.items():
        bins = [(-math.inf, h.edges[0], h.below)]
        bins += [(h.edges[i], h.edges[i + 1], c) for i, c in enumerate(h.counts)]
        bins.append((h.edges[-1], math.inf, h.above))
        rows += [{"probe": label, "scale": measure.histogram_scale, "bin_lo": lo, "bin_hi": hi, "count": int(c)}
                 for lo, hi, c in bins]
    return rows


def search_rows(loss_fn, params, directions, base, measure: Measure) -> list[dict[str, Any]]:
    """The step search per probe (paper Figs. 2-4): best reduction, its step, where the loss rises."""
    found = landscape_search(loss_fn, params, directions, base=base, start=measure.search_start,
                             growth=measure.search_growth, max_steps=measure.search_max_steps,
                             refinements=measure.search_refinements, points=measure.search_points)
    return [
        {"probe": label, "base_loss": float(base), "best_step": r.best_step, "best_loss": r.best_loss,
         "best_reduction": r.best_reduction, "rise_step": r.rise_step,
         "resolution": r.resolution if math.isfinite(r.resolution) else None,
         "bracketed": r.bracketed, "evaluations": r.evaluations}
        for label, r in found.items()
    ]


def curvature_row(loss_fn, params, grad, measure: Measure, generator: torch.Generator) -> dict[str, Any]:
    """Top Hessian eigenvalue and the |g_i| vs |H_ii| rank correlation (paper Sec. 4.2), with the
    Hutchinson estimate's standard error beside it (how much of |H_ii| is sampling noise)."""
    iters, tol = measure.lanczos_iters, measure.lanczos_tol
    samples, topk = measure.hutchinson_samples, measure.topk_fraction
    try:
        eig = top_hessian_eigenvalue(loss_fn, params, iters=iters, tol=tol, generator=generator)
    except torch.linalg.LinAlgError as err:  # the Lanczos tridiagonal holds inf/NaN: products overflowed
        raise Diverged(f"top Hessian eigenvalue: {err}") from err
    if not math.isfinite(eig.value):
        raise Diverged("the top Hessian eigenvalue is not finite")
    diag, stderr = hutchinson_diagonal_with_error(loss_fn, params, samples=samples, generator=generator)
    correlation = gradient_curvature_correlation(grad, diag, topk_fraction=topk)
    noise = hutchinson_noise(diag, stderr)
    return {
        "top_eigenvalue": float(eig.value),
        "lanczos_iters": int(eig.iters),
        "lanczos_tol": tol,
        "lanczos_converged": bool(eig.converged),
        "hutchinson_samples": samples,
        "hutchinson_rel_stderr": noise["rel_stderr"],
        "hutchinson_resolved": noise["resolved"],
        "rank_corr_all": correlation["all"],
        "rank_corr_topk": correlation["topk"],
        "topk_fraction": topk,
    }
