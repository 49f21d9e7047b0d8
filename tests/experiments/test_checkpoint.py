"""Resuming from a checkpoint, without Ray: the same records and metrics as the run never stopped."""

from __future__ import annotations

import io

import pytest
import torch

from pipeline.config import Trial
from pipeline.experiments import EXPERIMENTS
from pipeline.experiments.checkpoint import Checkpoints
from pipeline.workloads import build_workload

TINY_LM = {"name": "causal_lm", "size": "tiny", "batch_size": 4, "seq_len": 32}
MEASURE = {"at": [0, 2], "landscape_offsets": [-0.1, 0.0, 0.1], "histogram_bins": 8}


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


def test_the_data_stream_resumes_at_any_batch_across_epochs():
    workload = build_workload(TINY_LM, seed=3, device="cpu")
    n = next(iter(workload._train.values())).shape[0]
    workload.batch_size = n // 3 + 1  # two batches per epoch, the partial third dropped
    stream = workload.train_batches()
    batches = [next(stream) for _ in range(7)]
    for skip in (1, 2, 3, 5):
        later = workload.train_batches(skip=skip)
        for expected in batches[skip:]:
            got = next(later)
            assert all(torch.equal(got[k], expected[k]) for k in expected)
