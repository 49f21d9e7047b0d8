"""The convergence experiment (paper Fig. 6, Table 3): one algorithm and clip setting, its loss curve."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pipeline.experiments.common import (
    Records,
    Reporter,
    emit,
    is_finite,
    resolve_device,
    seed_everything,
    training_optimizer,
)
from pipeline.workloads import build_workload


def run(trial: Mapping[str, Any], report: Reporter) -> Records:
    """Trains for `steps` steps; logs the train loss every step, the test loss every `eval_every`.

    A run that diverges (non-finite loss) stops there: its last row carries the non-finite loss,
    which the aggregate stage ranks below every finite one when it picks the best learning rate.
    """
    steps = int(trial["steps"])
    eval_every = int(trial.get("eval_every") or 0)
    seed_everything(int(trial["seed"]))
    device = resolve_device(trial.get("device"))
    workload = build_workload(trial["workload"], seed=int(trial["seed"]), device=device)
    model = workload.model
    optimizer = training_optimizer(model, trial)
    rows: list[dict[str, Any]] = []
    batches = workload.train_batches()
    for step in range(steps):
        model.train()
        loss = workload.loss(next(batches))
        train_loss = float(loss.detach())
        row = {"step": step, "train_loss": train_loss, "test_loss": None}
        if eval_every and (step % eval_every == 0 or step == steps - 1):
            row["test_loss"] = test_loss(workload)
        rows.append(row)
        emit(report, step, {k: v for k, v in row.items() if k != "step" and v is not None})
        if not is_finite(train_loss):
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    return {"convergence": rows}


def test_loss(workload) -> float:
    """Loss on the fixed test batch, model in eval mode (restored to train mode after)."""
    workload.model.eval()
    with torch.no_grad():
        value = float(workload.loss(workload.test_batch))
    workload.model.train()
    return value
