"""Resuming from a checkpoint, without Ray: the same records and metrics as the run never stopped."""

from __future__ import annotations

import io
import math

import pytest
import torch

from pipeline.config import DIVERGENCE_FACTOR, Trial
from pipeline.experiments import EXPERIMENTS
from pipeline.experiments.checkpoint import Checkpoints

TINY_LM = {"name": "causal_lm", "size": "tiny", "batch_size": 4, "seq_len": 32}
# A measurement batch of 4 training examples: the default (1024, the paper's) would make each resume minutes.
MEASURE = {"at": [0, 2], "landscape_offsets": [-0.1, 0.0, 0.1], "histogram_bins": 8, "batch_size": 4}


def trial(experiment: str, **changes) -> Trial:
    base = {
        "sweep": "t", "trial_id": f"{experiment}-x", "experiment": experiment, "workload": TINY_LM,
        "algorithm": "sgd", "lr": 0.1, "seed": 0, "steps": 2, "device": "cpu", "eval_every": 1, "measure": MEASURE,
    }
    return Trial.model_validate(base | changes)


# Dropout (the global torch RNG), curvature (the hook's own generator), the data stream's position:
# the random states a resume has to bring back.
CASES = {
    "sharpness": trial("sharpness", steps=4, measure=MEASURE | {"at": [0, 2, 4], "curvature": True,
                                                                "lanczos_iters": 3, "hutchinson_samples": 2}),
    "convergence": trial("convergence", steps=5, algorithm="adam", lr=1e-3, eval_every=2),
    "smoothness": trial("smoothness", steps=3, workload={"name": "classification", "size": "tiny", "batch_size": 4},
                        measure={"at": [0, 3], "gn_samples": 4}),
}


def uninterrupted(t, every: int):
    """The whole run, keeping every checkpoint it takes: step -> payload."""
    saved: dict[int, bytes] = {}
    report: list = []
    records = EXPERIMENTS[t.experiment](t, report, Checkpoints(load=lambda: None, save=saved.__setitem__,
                                                               every=every))
    return records, report, saved


@pytest.mark.parametrize("experiment", sorted(CASES))
def test_a_run_resumed_from_any_checkpoint_gives_the_same_records_bit_for_bit(experiment):
    t = CASES[experiment]
    plain_report: list = []
    plain = EXPERIMENTS[experiment](t, plain_report)  # no checkpoints at all
    records, report, saved = uninterrupted(t, every=2)
    assert records == plain and report == plain_report  # taking checkpoints changes nothing
    measured = set(t.measure.steps(t.steps))
    expected = {s + 1 for s in range(t.steps) if s in measured or (s + 1) % 2 == 0}
    assert sorted(saved) == sorted(expected)
    for step, payload in saved.items():
        resumed_report: list = []
        later: dict[int, bytes] = {}
        resumed = EXPERIMENTS[experiment](t, resumed_report, Checkpoints(load=lambda p=payload: p,
                                                                         save=later.__setitem__, every=2))
        assert resumed == plain, f"resumed at step {step}"
        # Its metrics start at the checkpoint's step: with those sent before it, each step once.
        assert resumed_report == [m for m in plain_report if m["step"] >= step]
        assert sorted(later) == sorted(s for s in saved if s > step)


def test_a_checkpoint_of_other_settings_is_ignored_and_the_run_starts_over():
    t = CASES["convergence"]
    _, _, saved = uninterrupted(t, every=2)
    other = t.model_copy(update={"lr": 2e-3})
    report: list = []
    fresh: list = []
    resumed = EXPERIMENTS["convergence"](other, report, Checkpoints(load=lambda: saved[2], save=lambda s, p: None))
    assert resumed == EXPERIMENTS["convergence"](other, fresh) and report == fresh
    assert report[0]["step"] == 0


def test_a_checkpoint_holds_the_records_so_far_and_every_rng():
    t = CASES["sharpness"]
    _, _, saved = uninterrupted(t, every=0)
    assert sorted(saved) == [1, 3]  # after the updates of measurement points 0 and 2
    state = torch.load(io.BytesIO(saved[3]), weights_only=True)
    assert state["step"] == 3 and state["trial"] == t.to_json()
    assert {r["step"] for r in state["hook"]["tables"]["sharpness"]} == {0, 2}
    assert set(state["rng"]) >= {"torch", "python", "numpy"} and "generator" in state["hook"]
    assert state["rule_state"]["step"] == 3  # three updates of the training optimizer



def test_a_resumed_trial_diverges_where_an_uninterrupted_one_does():
    # SGD at lr 30 on the tiny LM: the loss grows each step and passes the factor x the step-0
    # loss a few steps in, still finite. The reference is the step-0 loss, kept in the checkpoint:
    # measured from the resumed step's own loss, the same point would not count as diverged.
    t = trial("convergence", steps=6, lr=30.0)
    plain_report: list = []
    plain = EXPERIMENTS["convergence"](t, plain_report)
    (outcome,) = plain["trials"]
    step, initial = outcome["diverged_step"], plain_report[0]["train_loss"]
    assert outcome["status"] == "diverged" and step is not None and step >= 2
    assert math.isfinite(outcome["diverged_loss"]) and outcome["diverged_loss"] > DIVERGENCE_FACTOR * initial
    assert outcome["diverged_loss"] <= DIVERGENCE_FACTOR * plain_report[step - 1]["train_loss"]
    records, _, saved = uninterrupted(t, every=1)
    assert records == plain
    assert sorted(saved) == list(range(1, step + 1))  # none after the update of the diverging point's predecessor
    for resume_at, payload in saved.items():
        assert torch.load(io.BytesIO(payload), weights_only=True)["loop"] == {"initial": initial}
        resumed_report: list = []
        resumed = EXPERIMENTS["convergence"](t, resumed_report,
                                             Checkpoints(load=lambda p=payload: p, save=lambda s, p: None))
        assert resumed == plain, f"resumed at step {resume_at}"
        assert resumed["trials"][0]["status"] == "diverged" and resumed["trials"][0]["diverged_step"] == step
        assert resumed_report == [m for m in plain_report if m["step"] >= resume_at]


class _Rows:
    def __init__(self) -> None:
        self.rows: list = []

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict, device) -> None:
        self.rows = list(state["rows"])


def test_restore_brings_back_the_weights_the_optimizer_and_every_rng():
    # The tiny workloads draw no global random numbers while training (no dropout): checked here.
    import random

    import numpy as np

    from pipeline.experiments.checkpoint import capture, restore
    from pipeline.experiments.common import training_optimizer

    t = CASES["convergence"]
    model = torch.nn.Linear(3, 2)
    optimizer = training_optimizer(model.parameters(), t)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    hook = _Rows()
    hook.rows.append({"step": 0, "train_loss": 1.5, "test_loss": None})
    payload = capture(t, 1, model, optimizer, hook)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    draws = (torch.rand(3).tolist(), random.random(), np.random.rand())

    fresh, fresh_hook = torch.nn.Linear(3, 2), _Rows()
    fresh_optimizer = training_optimizer(fresh.parameters(), t)
    assert restore(payload, t, fresh, fresh_optimizer, fresh_hook, torch.device("cpu")) == 1
    assert (torch.rand(3).tolist(), random.random(), np.random.rand()) == draws
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in weights.items())
    assert fresh_hook.rows == hook.rows
    moments = [torch.equal(a, b) for key in ("exp_avg", "exp_avg_sq")
               for a, b in zip(fresh_optimizer.rule_state[key], optimizer.rule_state[key])]
    assert fresh_optimizer.rule_state["step"] == 1 and all(moments)
