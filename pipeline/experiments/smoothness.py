"""The smoothness experiment (paper App. D, Table 8): Gauss-Newton L, ell, L/ell along a trajectory.

Trains the two-class classifier with the trial's optimizer (the paper: Adam) and, at the
scheduled steps, measures the Gauss-Newton smoothness on a fixed set of `gn_samples` test
samples: L (spectral norm of the GN Hessian), ell (the same after removing the coordinates
whose per-coordinate row norm is at least `outlier_factor` x the mean), and the fraction removed,
over the coordinates `gn_params` names (default: the attention weight matrices, as the authors'
code), beside the control: the norm after removing as many coordinates drawn at random.
"""

from __future__ import annotations

import torch

from pipeline.config import Trial
from pipeline.experiments.checkpoint import Checkpoints
from pipeline.experiments.common import Records, Reporter
from pipeline.experiments.loop import run_with
from pipeline.measure import gauss_newton_smoothness
from pipeline.workloads import Workload

_REPORTED = ("L", "ell", "ratio", "fraction_removed", "ell_random", "ratio_random")


class SmoothnessHook:
    wants_last_gradient = False

    def __init__(self, trial: Trial, workload: Workload, generator: torch.Generator) -> None:
        self.model = workload.model
        self.factor = trial.measure.outlier_factor
        self.param_set = trial.measure.gn_params
        self.control_seed = trial.measure.gn_control_seed
        n = trial.measure.gn_samples
        # The GN rows need only the model's inputs; labels would make HF models compute a loss.
        self.batch = {k: v[:n] for k, v in workload.test_batch.items() if k != "labels"}
        self.schedule = set(trial.measure.steps(trial.steps))
        self.rows: list[dict] = []

    def on_gradient(self, step, grads) -> None:
        pass

    def at_step(self, step: int, train_loss: float | None) -> dict[str, float]:
        if step not in self.schedule:
            return {}
        result = gauss_newton_smoothness(self.model, self.batch, outlier_factor=self.factor,
                                         params=self.param_set, control_seed=self.control_seed)
        row = {"step": step, **{k: float(result[k]) for k in _REPORTED},
               "outlier_factor": self.factor, "n_samples": int(result["n_samples"]),
               "gn_params": self.param_set, "n_params": int(result["n_params"]),
               "control_seed": self.control_seed}
        self.rows.append(row)
        return {f"gn/{k}": row[k] for k in _REPORTED}

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.rows = list(state["rows"])

    def records(self) -> Records:
        return {"smoothness": self.rows}


def run(trial: Trial, report: Reporter, checkpoints: Checkpoints | None = None) -> Records:
    return run_with(trial, report, SmoothnessHook, checkpoints)
