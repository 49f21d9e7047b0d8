"""The convergence experiment (paper Fig. 6, Table 3): one algorithm and clip setting, its loss curve."""

from __future__ import annotations

import torch

from pipeline.config import Trial
from pipeline.experiments.checkpoint import Checkpoints
from pipeline.experiments.common import Records, Reporter
from pipeline.experiments.loop import run_with
from pipeline.workloads import Workload


class ConvergenceHook:
    """The train loss at every update step, the test loss every `eval_every` (and at the last).

    A run that diverges (pipeline.experiments.loop) stops there: its last row carries the
    diverging loss and no test loss (nothing is evaluated on diverged weights); the aggregate
    stage gives such a run no final loss and ranks its learning rate below every finished one.
    """

    wants_last_gradient = False

    def __init__(self, trial: Trial, workload: Workload, generator: torch.Generator) -> None:
        self.trial, self.workload = trial, workload
        self.rows: list[dict] = []

    def on_gradient(self, step, grads) -> None:
        pass

    def at_step(self, step: int, train_loss: float | None) -> dict[str, float]:
        if train_loss is None:  # the last point: no update follows, so no row
            return {}
        every, last = self.trial.eval_every, self.trial.steps - 1
        row = {"step": step, "train_loss": train_loss, "test_loss": None}
        if every and (step % every == 0 or step == last):
            row["test_loss"] = test_loss(self.workload)
        self.rows.append(row)
        return {k: v for k, v in row.items() if k != "step" and v is not None}

    def on_diverged(self, step: int, train_loss: float) -> None:
        self.rows.append({"step": step, "train_loss": train_loss, "test_loss": None})

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.rows = list(state["rows"])

    def records(self) -> Records:
        return {"convergence": self.rows}


def run(trial: Trial, report: Reporter, checkpoints: Checkpoints | None = None) -> Records:
    return run_with(trial, report, ConvergenceHook, checkpoints)


def test_loss(workload: Workload) -> float:
    """Loss on the fixed test batch, model in eval mode (restored to train mode after)."""
    workload.model.eval()
    with torch.no_grad():
        value = float(workload.loss(workload.test_batch))
    workload.model.train()
    return value
