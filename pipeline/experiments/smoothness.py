"""The smoothness experiment (paper App. D, Table 8): Gauss-Newton L, ell, L/ell along a trajectory.

Trains the two-class classifier with the trial's optimizer (the paper: Adam) and, at the
scheduled steps, measures the Gauss-Newton smoothness on a fixed set of `gn_samples` test
samples: L (spectral norm of the GN Hessian), ell (the same after removing the coordinates
whose per-coordinate row norm is at least `outlier_factor` x the mean), and the fraction removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.experiments.common import (
    Records,
    Reporter,
    emit,
    measurement_steps,
    resolve_device,
    seed_everything,
    training_optimizer,
)
from pipeline.measure import gauss_newton_smoothness
from pipeline.workloads import build_workload


def run(trial: Mapping[str, Any], report: Reporter) -> Records:
    measure = dict(trial.get("measure") or {})
    steps = int(trial["steps"])
    seed_everything(int(trial["seed"]))
    device = resolve_device(trial.get("device"))
    workload = build_workload(trial["workload"], seed=int(trial["seed"]), device=device)
    model = workload.model
    optimizer = training_optimizer(model, trial)
    factor = float(measure.get("outlier_factor", 4.0))
    n = int(measure.get("gn_samples", 16))
    # The GN rows need only the model's inputs; labels would make HF models compute a loss.
    gn_batch = {k: v[:n] for k, v in workload.test_batch.items() if k != "labels"}
    schedule = set(measurement_steps(measure, steps))
    rows: list[dict[str, Any]] = []
    batches = workload.train_batches()
    for step in range(steps + 1):
        metrics: dict[str, float] = {}
        if step in schedule:
            result = gauss_newton_smoothness(model, gn_batch, outlier_factor=factor)
            rows.append(
                {
                    "step": step,
                    "L": float(result["L"]),
                    "ell": float(result["ell"]),
                    "ratio": float(result["ratio"]),
                    "fraction_removed": float(result["fraction_removed"]),
                    "outlier_factor": factor,
                    "n_samples": int(result["n_samples"]),
                }
            )
            metrics.update({f"gn/{k}": rows[-1][k] for k in ("L", "ell", "ratio", "fraction_removed")})
        if step < steps:
            model.train()
            loss = workload.loss(next(batches))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            metrics["train_loss"] = float(loss.detach())
        emit(report, step, metrics)
    model.eval()
    return {"smoothness": rows}
