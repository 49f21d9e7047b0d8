"""The one training loop: it owns the step convention; the experiments plug in as hooks.

Step convention: points 0..steps; at point s the loop draws minibatch s, takes its gradient at
the current weights (train mode), hands it to the hook, lets the hook measure at those same
weights, reports the point, then updates the weights (steps updates in all). At the last point
there is no update; a minibatch is drawn there only for a hook that wants its gradient (the
sharpness probes). A non-finite training loss ends the run at that point: nothing is measured
on the weights that step would produce.

Checkpoints (pipeline.experiments.checkpoint): after the update of each measurement point and
every `checkpoints.every` steps, the state that the next point starts from is saved; a run given a
checkpoint of its trial resumes at that point, so each step's rows and metrics come once from it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

import torch

from pipeline.config import Trial
from pipeline.experiments.checkpoint import Checkpoints, capture, restore
from pipeline.experiments.common import (
    Records, Reporter, emit, named_trainable, set_phase, resolve_device, seed_everything, training_optimizer,
)
from pipeline.workloads import Workload, build_workload


class Hook(Protocol):
    """An experiment's part of the loop."""

    wants_last_gradient: bool  # take a minibatch gradient at the last point too

    def on_gradient(self, step: int, grads: Mapping[str, torch.Tensor]) -> None:
        """This point's minibatch gradient (param name -> tensor), before any update."""

    def at_step(self, step: int, train_loss: float | None) -> dict[str, float]:
        """Measure at this point's weights (unchanged since the gradient); returns step metrics."""

    def records(self) -> Records:
        """The rows the experiment collected, by table."""

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the hook: its state between points and its records so far."""

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        """Takes back `state_dict()`'s state (tensors moved to `device`)."""


def train(trial: Trial, workload: Workload, hook: Hook, report: Reporter,
          checkpoints: Checkpoints | None = None) -> Records:
    """Run the trial's training along the step convention above (from its checkpoint, if
    `checkpoints` has one); returns the hook's records."""
    model = workload.model
    params = named_trainable(model)
    optimizer = training_optimizer(params.values(), trial)
    first = 0
    if checkpoints is not None:
        first = restore(checkpoints.load(), trial, model, optimizer, hook, workload.device)
        if first and checkpoints.on_resume is not None:
            checkpoints.on_resume(first)
    measured = set(trial.measure.steps(trial.steps))
    batches = workload.train_batches(skip=first)  # one minibatch per point before `first`
    for step in range(first, trial.steps + 1):
        last = step == trial.steps
        metrics: dict[str, float] = {}
        train_loss = None
        grads = None
        if not last or hook.wants_last_gradient:
            model.train()
            loss = workload.loss(next(batches))
            grads = torch.autograd.grad(loss, list(params.values()))
            train_loss = float(loss.detach())
            metrics["train_loss"] = train_loss
            hook.on_gradient(step, dict(zip(params, grads)))
        measuring = step in getattr(hook, "schedule", ())  # the hook's measurement points, if it has any
        if measuring:
            set_phase(report, "measuring", step)
        metrics.update(hook.at_step(step, train_loss))
        if measuring and not last:
            set_phase(report, "training", step)
        if metrics:
            emit(report, step, metrics)
        if last or (train_loss is not None and not math.isfinite(train_loss)):
            break
        for p, g in zip(params.values(), grads):
            p.grad = g
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if checkpoints is not None and checkpoints.due(step, step in measured):
            checkpoints.save(step + 1, capture(trial, step + 1, model, optimizer, hook))
    model.eval()
    return hook.records()


def run_with(trial: Trial, report: Reporter, make_hook, checkpoints: Checkpoints | None = None) -> Records:
    """Seed, build the trial's workload, make the experiment's hook from them, train."""
    generator = seed_everything(trial.seed)
    workload = build_workload(trial.workload, seed=trial.seed, device=resolve_device(trial.device))
    return train(trial, workload, make_hook(trial, workload, generator), report, checkpoints)
