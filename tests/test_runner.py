"""run_trial without Ray: a trial whose process dies after a checkpoint resumes there on its next attempt,
and its records, metrics and MLflow run come out as those of a trial that never stopped."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from pipeline.config import Trial
from pipeline.layout import ResultsLayout
from pipeline.runner import run_trial
from pipeline.sink import ResultsSink
from pipeline.tracking import open_tracker

# Convergence: a row and a metric at every step (the probe bank's resume: tests/experiments/test_checkpoint.py).
TRIAL = Trial.model_validate({
    "sweep": "resume", "trial_id": "convergence-x", "experiment": "convergence",
    "workload": {"name": "causal_lm", "size": "tiny", "batch_size": 4, "seq_len": 32},
    "algorithm": "adam", "lr": 1e-3, "steps": 6, "eval_every": 2, "device": "cpu",
})


class Died(BaseException):
    """The trial's process is gone (a SIGKILL): nothing more reaches the sink from it."""


class DiesAfterCheckpoint:
    """The sink as a trial sees it, up to its death right after its `n`-th checkpoint arrived."""

    def __init__(self, sink: ResultsSink, n: int) -> None:
        self.sink, self.left = sink, n

    def start(self, trial):
        self.sink.start(trial)

    def log(self, trial_id, points):
        self.sink.log(trial_id, points)

    def load_checkpoint(self, trial_id):
        return self.sink.load_checkpoint(trial_id)

    def save_checkpoint(self, trial_id, payload):
        self.sink.save_checkpoint(trial_id, payload)
        self.left -= 1
        if self.left == 0:
            raise Died

    def finish(self, trial, encoded, status="finished"):
        raise AssertionError("a dead trial cannot finish")

    def fail(self, trial_id, text):
        pass  # a killed process reports nothing


def records(layout: ResultsLayout) -> dict:
    tables = {p.stem: pq.read_table(p).to_pylist() for p in layout.records_dir(TRIAL.trial_id).glob("*.parquet")}
    tables.pop("trials")  # its wall time and host differ from run to run
    return tables


@pytest.mark.slow
def test_a_trial_killed_after_a_checkpoint_resumes_there_with_the_records_of_an_uninterrupted_one(tmp_path):
    tracker = open_tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    plain = ResultsLayout(tmp_path / "plain")
    sweep_run = tracker.start_sweep("plain", tags={})
    run_trial(TRIAL, ResultsSink(plain, sweep_run), checkpoint_every=2)
    sweep_run.end("FINISHED")

    # Checkpoints to resume at 1 (after measurement point 0), 2, 4 and 6 (every 2): it dies right
    # after the third, with the metrics of steps 0-3 sent, and its next attempt resumes at 4.
    resumed = ResultsLayout(tmp_path / "resumed")
    sweep_run = tracker.start_sweep("resumed", tags={})
    sink = ResultsSink(resumed, sweep_run)
    with pytest.raises(Died):
        run_trial(TRIAL, DiesAfterCheckpoint(sink, 3), checkpoint_every=2)
    assert resumed.checkpoint_file(TRIAL.trial_id).is_file() and not resumed.done_mark(TRIAL.trial_id).exists()
    summary = run_trial(TRIAL, sink, checkpoint_every=2)
    sweep_run.end("FINISHED")

    assert summary["resumed_at"] == 4
    assert records(resumed) == records(plain)  # every row, every float to the bit
    assert [r["step"] for r in records(resumed)["convergence"]] == list(range(TRIAL.steps))
    assert not resumed.checkpoint_file(TRIAL.trial_id).exists()  # the done mark removed it
    client = MlflowClient(tracker.uri)
    for name in ("plain", "resumed"):
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], "tags.trial_id != ''")
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # one run for both attempts
        history = client.get_metric_history(runs[0].info.run_id, "train_loss")
        assert sorted(m.step for m in history) == list(range(TRIAL.steps))  # each step once
