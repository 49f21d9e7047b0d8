"""The results sink: records then the done mark, failures, and runs of trials that died left never open."""

from __future__ import annotations

from pipeline.config import Trial
from pipeline.layout import ResultsLayout
from pipeline.records import encode_trial_records
from pipeline.sink import ResultsSink

TRIAL = Trial.model_validate({
    "sweep": "s", "trial_id": "convergence-x", "experiment": "convergence",
    "workload": {"name": "causal_lm"}, "algorithm": "sgd", "lr": 0.1, "steps": 2,
})


class FakeRun:
    seconds, metrics_logged = 0.0, 0

    def __init__(self, log: list) -> None:
        self.log_ = log

    def log(self, step, metrics):
        self.log_.append(("log", step))

    def set_tags(self, tags):
        self.log_.append(("tags", dict(tags)))

    def log_artifacts(self, paths, artifact_path):
        self.log_.append(("artifacts", sorted(p.name for p in paths)))

    def end(self, status="FINISHED", reason=None):
        self.log_.append(("end", status))


class FakeSweepRun:
    def __init__(self) -> None:
        self.events: dict[str, list] = {}
        self.started = 0

    def start_trial(self, trial):
        self.started += 1
        return FakeRun(self.events.setdefault(trial.trial_id, []))

    def end(self, status):
        pass


def test_finish_writes_records_then_the_done_mark_and_ends_the_run(tmp_path):
    layout, tracker = ResultsLayout(tmp_path), FakeSweepRun()
    sink = ResultsSink(layout, tracker)
    sink.start(TRIAL)
    sink.log(TRIAL.trial_id, [(0, {"train_loss": 1.0})])
    rows = {"convergence": [{"step": 0, "train_loss": 1.0, "test_loss": None}]}
    sink.finish(TRIAL, encode_trial_records(TRIAL.identity(), rows))
    assert layout.done_mark(TRIAL.trial_id).is_file()
    assert (layout.records_dir(TRIAL.trial_id) / "convergence.parquet").is_file()
    assert tracker.events[TRIAL.trial_id] == [("log", 0), ("tags", {"status": "finished"}),
                                              ("artifacts", ["convergence.parquet"]), ("end", "FINISHED")]
    assert sink.end_open("FAILED") == []


def test_a_trial_that_died_has_its_run_ended_not_left_running(tmp_path):
    layout, tracker = ResultsLayout(tmp_path), FakeSweepRun()
    sink = ResultsSink(layout, tracker)
    sink.start(TRIAL)  # its process dies: neither finish nor fail arrives
    assert sink.end_open("FAILED") == [TRIAL.trial_id]
    assert tracker.events[TRIAL.trial_id] == [("end", "FAILED")]
    assert not layout.done_mark(TRIAL.trial_id).exists()


def test_fail_keeps_the_traceback_and_ends_the_run_failed(tmp_path):
    layout, tracker = ResultsLayout(tmp_path), FakeSweepRun()
    sink = ResultsSink(layout, tracker)
    sink.start(TRIAL)
    sink.fail(TRIAL.trial_id, "Traceback: boom")
    assert layout.error_file(TRIAL.trial_id).read_text() == "Traceback: boom"
    assert tracker.events[TRIAL.trial_id] == [("end", "FAILED")]
    sink.start(TRIAL)  # a re-run clears what the failed attempt left
    assert not layout.error_file(TRIAL.trial_id).exists()


def test_a_retried_trial_keeps_its_run(tmp_path):
    layout, tracker = ResultsLayout(tmp_path), FakeSweepRun()
    sink = ResultsSink(layout, tracker)
    sink.start(TRIAL)
    sink.log(TRIAL.trial_id, [(0, {"train_loss": 1.0})])
    sink.start(TRIAL)  # its worker died; Tune starts it again
    assert tracker.started == 1
    sink.log(TRIAL.trial_id, [(1, {"train_loss": 0.5})])
    assert tracker.events[TRIAL.trial_id] == [("log", 0), ("log", 1)]


class BrokenSweepRun(FakeSweepRun):
    """A store that stops answering after `works` calls (a tracking server killed mid-sweep)."""

    def __init__(self, works: int) -> None:
        super().__init__()
        self.works = works

    def start_trial(self, trial):
        run = super().start_trial(trial)
        sweep = self

        class Failing(FakeRun):
            def log(self, step, metrics):
                sweep.works -= 1
                if sweep.works < 0:
                    raise ConnectionError("Max retries exceeded with url: /api/2.0/mlflow/runs/log-batch\nmore")
                super().log(step, metrics)

        failing = Failing(run.log_)
        return failing


def test_a_tracking_failure_is_kept_and_the_records_are_written_regardless(tmp_path):
    layout, tracker = ResultsLayout(tmp_path), BrokenSweepRun(works=1)
    sink = ResultsSink(layout, tracker)
    sink.start(TRIAL)
    sink.log(TRIAL.trial_id, [(0, {"train_loss": 1.0}), (1, {"train_loss": 0.5}), (2, {"train_loss": 0.2})])
    assert sink.tracking_failure() == "ConnectionError: Max retries exceeded with url: /api/2.0/mlflow/runs/log-batch"
    rows = {"convergence": [{"step": 0, "train_loss": 1.0, "test_loss": None}]}
    summary = sink.finish(TRIAL, encode_trial_records(TRIAL.identity(), rows))
    assert layout.done_mark(TRIAL.trial_id).is_file() and summary["metrics_logged"] == 0
    # Tracking stopped at the first failure: no further call reached the store.
    assert tracker.events[TRIAL.trial_id] == [("log", 0)]
    sink.start(TRIAL.model_copy(update={"trial_id": "other"}))
    assert "other" not in tracker.events
