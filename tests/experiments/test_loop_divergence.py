"""Divergence in the training loop: the trial ends as diverged, and nothing is measured on diverged weights."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.config import DIVERGENCE_FACTOR, ConfigError, Trial, validate
from pipeline.experiments import EXPERIMENTS
from pipeline.experiments.common import seed_everything
from pipeline.experiments.loop import diverged, train
from pipeline.workloads import build_workload

TINY_LM = {"name": "causal_lm", "size": "tiny", "batch_size": 4, "seq_len": 32}
TINY_CLS = {"name": "classification", "size": "tiny", "batch_size": 4, "seq_len": 32}


def trial(experiment: str, **changes) -> Trial:
    base = {
        "sweep": "t", "trial_id": f"{experiment}-x", "experiment": experiment, "workload": TINY_LM,
        "algorithm": "sgd", "lr": 0.1, "seed": 0, "steps": 6, "device": "cpu", "eval_every": 1,
    }
    return Trial.model_validate(base | changes)


def test_the_rule():
    assert diverged(math.nan, 1.0, 10.0) and diverged(math.inf, None, None) and diverged(-math.inf, 1.0, None)
    assert diverged(10.5, 1.0, 10.0) and not diverged(10.0, 1.0, 10.0) and not diverged(1e9, 1.0, None)
    assert not diverged(5.0, 0.0, 10.0)  # a zero initial loss gives no scale: only non-finite counts


class RecordingHook:
    """Counts what the loop hands a hook: the points it may measure at, and the diverging point."""

    wants_last_gradient = False

    def __init__(self) -> None:
        self.gradients, self.measured, self.diverged_at = [], [], []

    def on_gradient(self, step, grads) -> None:
        self.gradients.append(step)

    def at_step(self, step, train_loss):
        self.measured.append(step)
        return {}

    def on_diverged(self, step, train_loss) -> None:
        self.diverged_at.append((step, train_loss))

    def records(self):
        return {}


def _train(t: Trial, hook) -> tuple[dict, list]:
    seed_everything(t.seed)
    workload = build_workload(t.workload, seed=t.seed, device=torch.device("cpu"))
    report: list = []
    return train(t, workload, hook, report), report


def test_a_huge_learning_rate_ends_the_trial_before_the_hook_measures_the_blown_up_weights():
    # SGD at lr 1000 on the tiny LM: the loss is ~6 at step 0 and > 1000 at step 1 (then inf, NaN).
    hook = RecordingHook()
    records, report = _train(trial("convergence", lr=1e3), hook)
    (outcome,) = records["trials"]
    assert outcome["status"] == "diverged" and outcome["diverged_step"] == 1
    first = report[0]["train_loss"]
    assert outcome["diverged_loss"] > 10 * first  # the default divergence_factor
    assert hook.measured == [0] and hook.gradients == [0]  # nothing at or after the diverged point
    assert hook.diverged_at == [(1, outcome["diverged_loss"])]
    assert report[-1] == {"step": 1, "train_loss": outcome["diverged_loss"], "diverged": 1.0}


def test_without_a_factor_only_a_non_finite_loss_ends_it():
    hook = RecordingHook()
    records, report = _train(trial("convergence", lr=1e3, divergence_factor=None), hook)
    (outcome,) = records["trials"]
    assert outcome["status"] == "diverged" and outcome["diverged_step"] > 1
    assert not math.isfinite(outcome["diverged_loss"])
    assert hook.measured == list(range(outcome["diverged_step"]))
    assert all(math.isfinite(r["train_loss"]) for r in report[:-1])


def test_a_run_that_learns_finishes():
    hook = RecordingHook()
    records, _ = _train(trial("convergence", lr=0.1, steps=3), hook)
    assert records["trials"] == [{"status": "finished", "diverged_step": None, "diverged_loss": None}]
    assert hook.measured == [0, 1, 2, 3] and hook.diverged_at == []


def test_divergence_in_the_last_update_is_caught_at_the_last_point():
    # Smoothness takes no gradient at the last point; its GN measurement there would see the weights
    # of the last update. Adam at lr 10 blows the classifier up in one update (loss 0.69 -> ~200).
    t = trial("smoothness", workload=TINY_CLS, algorithm="adam", lr=10.0, steps=1,
              measure={"at": [0, 1], "gn_samples": 3})
    records = EXPERIMENTS["smoothness"](t, [])
    assert [r["step"] for r in records["smoothness"]] == [0]
    assert records["trials"][0]["status"] == "diverged" and records["trials"][0]["diverged_step"] == 1


def test_curvature_on_a_diverging_trial_measures_only_before_and_does_not_fail():
    # Before: the Lanczos/Hutchinson measurement at NaN weights failed with a linear-algebra error.
    t = trial("sharpness", lr=1e3, divergence_factor=None,
              measure={"at": list(range(7)), "curvature": True,
                       "probes": [{"label": "sgd", "algorithm": "sgd"}, {"label": "adam", "algorithm": "adam"}],
                       "landscape_offsets": [0.0, 0.1], "histogram_bins": 4, "lanczos_iters": 5,
                       "hutchinson_samples": 2})
    records = EXPERIMENTS["sharpness"](t, [])
    step = records["trials"][0]["diverged_step"]
    assert records["trials"][0]["status"] == "diverged" and step is not None
    # The training loss there is still finite (no factor): the curvature measurement found it.
    assert math.isfinite(records["trials"][0]["diverged_loss"])
    for table in ("sharpness", "landscape", "histogram", "curvature"):
        steps = {r["step"] for r in records[table]}
        assert steps == set(range(step)), table
    for row in records["sharpness"]:
        assert math.isfinite(row["sharpness"])


def test_the_convergence_row_of_the_diverging_point_has_no_test_loss():
    records = EXPERIMENTS["convergence"](trial("convergence", lr=1e3, eval_every=1), [])
    rows = records["convergence"]
    assert [r["step"] for r in rows] == [0, 1]
    assert rows[0]["test_loss"] is not None and rows[1]["test_loss"] is None  # not evaluated on diverged weights


def _block(**changes) -> dict:
    return {"name": "d", "experiments": [{"experiment": "convergence", "workload": TINY_LM, "steps": 2,
                                          "algorithms": {"sgd": {"lr": 0.1}}, **changes}]}


def test_the_factor_is_a_block_setting_with_a_default():
    assert validate(_block()).trials[0].divergence_factor == DIVERGENCE_FACTOR == 10.0
    assert validate(_block(divergence_factor=3)).trials[0].divergence_factor == 3.0
    assert validate(_block(divergence_factor=None)).trials[0].divergence_factor is None
    for bad in (1, 0.5, "x"):
        with pytest.raises(ConfigError, match="divergence_factor"):
            validate(_block(divergence_factor=bad))
