"""The sharpness experiment (paper Sec. 3, Tables 1/4-7, Figs. 1-3): probe directions along a trajectory.

One training optimizer (SGD-momentum or Adam) moves the weights. Every step's minibatch gradient
is also fed to the probe bank; at the scheduled steps each probe's current update is a direction
whose directional sharpness, gradient correlation, 1-D landscape and coordinate histogram are
measured on the fixed test batch (model in eval mode), with the weights where the step's
gradient was taken. Optionally the curvature beyond the paper (Sec. 4.2 conjecture) is measured
at the same points: the top Hessian eigenvalue and the rank correlation of |g_i| with |H_ii|.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pipeline.experiments.common import (
    Records,
    Reporter,
    emit,
    measurement_steps,
    named_trainable,
    resolve_device,
    seed_everything,
    training_optimizer,
)
from pipeline.measure import (
    gradient_correlation,
    gradient_curvature_correlation,
    hutchinson_diagonal,
    loss_landscape,
    sharpness_with_robust,
    top_hessian_eigenvalue,
    update_histogram,
    update_norms,
)
from pipeline.optim import DEFAULT_PROBES, ProbeBank, ProbeSpec
from pipeline.workloads import build_workload

# Offsets along v/||v|| (parameter-space distance) for the 1-D landscape; 0 is the reference loss.
DEFAULT_OFFSETS = (-0.2, -0.1, -0.05, 0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def probe_specs(probes: Any) -> tuple[ProbeSpec, ...]:
    """`"default"` (the paper's twelve) or a list of ProbeSpec fields from the config."""
    if probes in (None, "default"):
        return DEFAULT_PROBES
    return tuple(ProbeSpec(**dict(p)) for p in probes)


def run(trial: Mapping[str, Any], report: Reporter) -> Records:
    """Trains along one trajectory and measures every probe direction at the scheduled steps."""
    measure = dict(trial.get("measure") or {})
    steps = int(trial["steps"])
    generator = seed_everything(int(trial["seed"]))
    device = resolve_device(trial.get("device"))
    workload = build_workload(trial["workload"], seed=int(trial["seed"]), device=device)
    model = workload.model
    params = named_trainable(model)
    optimizer = training_optimizer(model, trial)
    specs = probe_specs(measure.get("probes"))
    bank = ProbeBank({n: p.detach() for n, p in params.items()}, specs)
    test_loss = workload.loss_fn(workload.test_batch)
    schedule = set(measurement_steps(measure, steps))
    records: Records = {"sharpness": [], "landscape": [], "histogram": []}
    if measure.get("curvature"):
        records["curvature"] = []

    batches = workload.train_batches()
    for step in range(steps + 1):
        model.train()
        loss = workload.loss(next(batches))
        grads = torch.autograd.grad(loss, list(params.values()))
        bank.step(dict(zip(params, grads)), {n: p.detach() for n, p in params.items()})
        metrics = {"train_loss": float(loss.detach())}
        if step in schedule:
            model.eval()
            point = measure_point(test_loss, params, bank, specs, measure, generator)
            for table, rows in point.items():
                records[table].extend({"step": step, **row} for row in rows)
            metrics.update(
                {f"sharpness/{r['probe']}": r["sharpness"] for r in point["sharpness"]}
                | {f"ratio_to_sgd/{r['probe']}": r["ratio_to_sgd"] for r in point["sharpness"]}
            )
        emit(report, step, metrics)
        if step == steps:
            break
        for p, g in zip(params.values(), grads):
            p.grad = g
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return records


def measure_point(
    loss_fn,
    live_params: Mapping[str, torch.Tensor],
    bank: ProbeBank,
    specs: tuple[ProbeSpec, ...],
    measure: Mapping[str, Any],
    generator: torch.Generator,
) -> Records:
    """All the measurements at one point of the trajectory, as rows without the step column."""
    params = {n: p.detach() for n, p in live_params.items()}
    directions = bank.directions()
    sharp = sharpness_with_robust(
        loss_fn, params, directions, delta=float(measure.get("robust_delta", 0.01))
    )
    # The landscape and the sharpness are on the test batch, so the first-order term of the
    # loss change along v is the test-batch gradient's: that is the correlation we report.
    test_grad = torch.func.grad(loss_fn)(params)
    correlation = gradient_correlation(test_grad, directions)
    norms = update_norms(directions)
    sgd_value = sharp["sgd"].value if "sgd" in sharp else float("nan")
    by_label = {s.label: s for s in specs}
    sharpness_rows = [
        {
            "probe": label,
            "probe_algorithm": by_label[label].algorithm,
            "probe_clip_fraction": float(by_label[label].clip_fraction),
            "probe_clip_target": by_label[label].clip_target,
            "sharpness": result.value,
            "sharpness_raw": result.raw,
            "robust": bool(result.robust),
            "ratio_to_sgd": result.value / sgd_value if sgd_value else float("nan"),
            "grad_correlation": correlation[label],
            "update_norm": norms[label],
        }
        for label, result in sharp.items()
    ]
    offsets = [float(s) for s in measure.get("landscape_offsets") or DEFAULT_OFFSETS]
    with torch.no_grad():
        base = float(loss_fn(params))
        curves = loss_landscape(loss_fn, params, directions, offsets)
    landscape_rows = [
        {"probe": label, "offset": s, "loss": loss, "loss_change": loss - base}
        for label, losses in curves.items()
        for s, loss in zip(offsets, losses)
    ]
    histograms = update_histogram(
        directions,
        bins=int(measure.get("histogram_bins", 40)),
        lo=float(measure.get("histogram_lo", -8.0)),
        hi=float(measure.get("histogram_hi", 0.0)),
    )
    histogram_rows = [
        {"probe": label, "bin_lo": edges[i], "bin_hi": edges[i + 1], "count": int(c)}
        for label, (edges, counts) in histograms.items()
        for i, c in enumerate(counts)
    ]
    point: Records = {
        "sharpness": sharpness_rows,
        "landscape": landscape_rows,
        "histogram": histogram_rows,
    }
    if measure.get("curvature"):
        point["curvature"] = [curvature_row(loss_fn, params, test_grad, measure, generator)]
    return point


def curvature_row(loss_fn, params, grad, measure, generator) -> dict[str, Any]:
    """Top Hessian eigenvalue and the |g_i| vs |H_ii| rank correlation (paper Sec. 4.2)."""
    iters, tol = int(measure.get("lanczos_iters", 20)), float(measure.get("lanczos_tol", 1e-3))
    samples = int(measure.get("hutchinson_samples", 8))
    topk = float(measure.get("topk_fraction", 0.1))
    eig = top_hessian_eigenvalue(loss_fn, params, iters=iters, tol=tol, generator=generator)
    diag = hutchinson_diagonal(loss_fn, params, samples=samples, generator=generator)
    correlation = gradient_curvature_correlation(grad, diag, topk_fraction=topk)
    return {
        "top_eigenvalue": float(eig.value),
        "lanczos_iters": int(eig.iters),
        "lanczos_tol": tol,
        "lanczos_converged": bool(eig.converged),
        "hutchinson_samples": samples,
        "rank_corr_all": correlation["all"],
        "rank_corr_topk": correlation["topk"],
        "topk_fraction": topk,
    }
