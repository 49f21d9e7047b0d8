"""The one training loop: it owns the step convention; the experiments plug in as hooks.

Step convention: points 0..steps; at point s the loop draws minibatch s, takes its gradient at
the current weights (train mode), hands it to the hook, lets the hook measure at those same
weights, reports the point, then updates the weights (steps updates in all). At the last point
there is no update; a minibatch is drawn there only for a hook that wants its gradient (the
sharpness probes).

Divergence: the training loss at point s is the loss at the weights of point s, so it is checked
before the hook sees that point. A non-finite loss or gradient, or a loss above
`trial.divergence_factor` x the step-0 loss, ends the trial there with status `diverged`: the
hook measures nothing at that point or after (only `on_diverged`, if it has one, gets the loss).
A hook whose measurement meets non-finite values where the training loss was still finite (a
Hessian-vector product that overflows on blown-up weights) raises `Diverged`: the trial ends
there the same way, with none of that point's measurements.
At the last point, where no gradient may be needed, the loss is still taken (without a
gradient) so that a trial never measures weights that blew up in its last update.

Checkpoints (pipeline.experiments.checkpoint): after the update of each measurement point and
every `checkpoints.every` steps, the state that the next point starts from is saved (with the
step-0 loss, the divergence reference, so a resumed trial diverges where an uninterrupted one
would); a run given a checkpoint of its trial resumes at that point, so each step's rows and
metrics come once from it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

import torch

from pipeline.config import Trial
from pipeline.experiments.checkpoint import Checkpoints, capture, restore
from pipeline.schemas import DIVERGED, FINISHED
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

    # Optional: `on_diverged(step, train_loss)`, the diverging point's loss (nothing is measured there).


class Diverged(Exception):
    """A hook's measurement found the weights diverged (non-finite values); the loop ends the trial."""


def diverged(loss: float, initial: float | None, factor: float | None) -> bool:
    """Whether a training loss says the run has diverged (see the module docstring)."""
    if not math.isfinite(loss):
        return True
    return factor is not None and initial is not None and initial > 0 and loss > factor * initial


def _outcome(step: int | None, loss: float | None) -> Records:
    status = FINISHED if step is None else DIVERGED
    return {"trials": [{"status": status, "diverged_step": step,
                        "diverged_loss": None if loss is None else float(loss)}]}


def train(trial: Trial, workload: Workload, hook: Hook, report: Reporter,
          checkpoints: Checkpoints | None = None) -> Records:
    """Run the trial's training along the step convention above (from its checkpoint, if
    `checkpoints` has one); returns the hook's records and, as the `trials` table's row, the
    outcome: status finished or diverged (at which step, what loss)."""
    model = workload.model
    params = named_trainable(model)
    optimizer = training_optimizer(params.values(), trial)
    # The loop's own state between points: the divergence reference (the step-0 loss).
    state: dict[str, float | None] = {"initial": None}
    first = 0
    if checkpoints is not None:
        first = restore(checkpoints.load(), trial, model, optimizer, hook, workload.device, loop=state)
        if first and checkpoints.on_resume is not None:
            checkpoints.on_resume(first)
    measured = set(trial.measure.steps(trial.steps))
    batches = workload.train_batches(skip=first)  # one minibatch per point before `first`
    for step in range(first, trial.steps + 1):
        last = step == trial.steps
        metrics: dict[str, float] = {}
        train_loss = None
        grads = None
        model.train()
        if not last or hook.wants_last_gradient:
            loss = workload.loss(next(batches))
            grads = torch.autograd.grad(loss, list(params.values()))
            train_loss = float(loss.detach())
            finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())  # one device sync
            check = train_loss if finite else math.nan
        else:
            with torch.no_grad():
                check = float(workload.loss(next(batches)))
        if state["initial"] is None:
            state["initial"] = check
        if diverged(check, state["initial"], trial.divergence_factor):
            return _stop(hook, report, model, step, check)
        if train_loss is not None:
            metrics["train_loss"] = train_loss
            hook.on_gradient(step, dict(zip(params, grads)))
        measuring = step in getattr(hook, "schedule", ())  # the hook's measurement points, if it has any
        if measuring:
            set_phase(report, "measuring", step)
        try:
            metrics.update(hook.at_step(step, train_loss))
        except Diverged:
            return _stop(hook, report, model, step, check)
        if measuring and not last:
            set_phase(report, "training", step)
        if metrics:
            emit(report, step, metrics)
        if last:
            break
        for p, g in zip(params.values(), grads):
            p.grad = g
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if checkpoints is not None and checkpoints.due(step, step in measured):
            checkpoints.save(step + 1, capture(trial, step + 1, model, optimizer, hook, loop=state))
    model.eval()
    return {**hook.records(), **_outcome(None, None)}


def _stop(hook: Hook, report: Reporter, model: torch.nn.Module, step: int, loss: float) -> Records:
    """End the trial as diverged at this point: the hook's records so far and the outcome."""
    on_diverged = getattr(hook, "on_diverged", None)
    if on_diverged is not None:
        on_diverged(step, loss)
    emit(report, step, {"train_loss": loss, "diverged": 1.0})
    model.eval()
    return {**hook.records(), **_outcome(step, loss)}


def run_with(trial: Trial, report: Reporter, make_hook, checkpoints: Checkpoints | None = None) -> Records:
    """Seed, build the trial's workload, make the experiment's hook from them, train."""
    generator = seed_everything(trial.seed)
    workload = build_workload(trial.workload, seed=trial.seed, device=resolve_device(trial.device))
    return train(trial, workload, make_hook(trial, workload, generator), report, checkpoints)
