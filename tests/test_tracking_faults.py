"""Tracking after faults, on a real SQLite store: one run per sweep and per trial across re-runs,
each metric step logged once, stale runs ended, `sync-mlflow` rebuilding runs from the records,
and an unreachable server reported within seconds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline import tracking
from pipeline.__main__ import main
from pipeline.layout import ResultsLayout
from pipeline.records import encode_trial_records
from pipeline.sink import ResultsSink
from pipeline.tracking_sync import sync
from tests.test_tracking import fake_trial

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


def _runs(uri: str, name: str):
    mlflow = MlflowClient(uri)
    return mlflow.search_runs([mlflow.get_experiment_by_name(name).experiment_id])


def test_a_resumed_sweep_and_trial_reuse_their_runs_and_log_each_step_once(uri, tmp_path):
    tags = {"sweep_dir": str(tmp_path / "s")}
    first = tracking.start_sweep(uri, "s", tags=tags)
    run = first.start_trial(fake_trial(0))
    for step in range(4):
        run.log(step, {"loss": float(step)})
    run.flush()  # then the driver is killed: both runs stay RUNNING
    second = tracking.start_sweep(uri, "s", tags=tags)
    assert second.parent_run_id == first.parent_run_id
    again = second.start_trial(fake_trial(0))
    assert again.run_id == run.run_id and again.reused
    for step in range(6):  # the trial starts over: steps 0-3 again, then 4 and 5
        again.log(step, {"loss": float(step)})
    again.end("FINISHED")
    history = MlflowClient(uri).get_metric_history(run.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(6))
    second.end("FINISHED")
    assert len(_runs(uri, "s")) == 2
    # Another sweep directory with the same name: its own run.
    other = tracking.start_sweep(uri, "s", tags={"sweep_dir": str(tmp_path / "elsewhere")})
    assert other.parent_run_id != first.parent_run_id


def test_close_stale_ends_running_runs_finished_or_killed_with_the_reason(uri, tmp_path):
    sweep_run = tracking.start_sweep(uri, "stale", tags={"sweep_dir": str(tmp_path)})
    done, died = sweep_run.start_trial(fake_trial(0)), sweep_run.start_trial(fake_trial(1))
    assert sweep_run.close_stale(["trial0"], "the driver died") == {"trial0": "FINISHED", "trial1": "KILLED"}
    sweep_run.end("KILLED", "stopped by SIGINT")
    runs = {r.info.run_id: r for r in _runs(uri, "stale")}
    assert runs[done.run_id].info.status == "FINISHED" and runs[died.run_id].info.status == "KILLED"
    assert runs[died.run_id].data.tags["end_reason"] == "the driver died"
    assert runs[sweep_run.parent_run_id].data.tags["end_reason"] == "stopped by SIGINT"
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]


def _finished_trial(layout: ResultsLayout, sweep_run, index: int, steps: int = 3) -> None:
    trial = fake_trial(index, steps=steps)
    sink = ResultsSink(layout, sweep_run)
    sink.start(trial)
    rows = [{"step": s, "train_loss": 1.0 / (s + 1), "test_loss": 2.0 if s == steps else None}
            for s in range(steps + 1)]
    sink.finish(trial, encode_trial_records(trial.identity(), {"convergence": rows}))


class NoStore:
    """A sweep run whose store is down from the first call on."""

    def start_trial(self, trial):
        raise ConnectionError("Connection refused")


def test_sync_rebuilds_the_runs_from_the_records_once(uri, tmp_path):
    layout = ResultsLayout(tmp_path / "results" / "s")
    layout.write_plan(["trial0", "trial1", "trial2"])
    _finished_trial(layout, NoStore(), 0)  # tracking down: records only
    _finished_trial(layout, NoStore(), 1)
    layout.tables_dir.mkdir(parents=True)  # what `aggregate` wrote while the store was down
    (layout.tables_dir / "convergence.parquet").write_bytes(b"table")
    (layout.sweep_dir / "report.md").write_text("# Sweep s\n")
    summary = sync(layout, tracking.open_tracker(uri), "s")
    assert (summary.trials, summary.missing, summary.metrics) == (2, ["trial2"], 2 * (4 + 1))
    assert summary.report_files == 2
    runs = _runs(uri, "s")
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    held = MlflowClient(uri).list_artifacts(parent.info.run_id)
    assert sorted(a.path for a in held) == ["report.md", "tables"]
    assert [a.path for a in MlflowClient(uri).list_artifacts(parent.info.run_id, "tables")] == [
        "tables/convergence.parquet"]
    children = {r.data.tags["trial_id"]: r for r in runs if r is not parent}
    assert sorted(children) == ["trial0", "trial1"] and parent.info.status == "FAILED"
    client = MlflowClient(uri)
    for run in children.values():
        assert run.info.status == "FINISHED" and run.data.params["steps"] == "3"
        assert [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, "train_loss"),
                                                   key=lambda m: m.step)] == [(s, 1.0 / (s + 1)) for s in range(4)]
        assert [a.path for a in client.list_artifacts(run.info.run_id, "records")] == ["records/convergence.parquet"]
    again = sync(layout, tracking.open_tracker(uri), "s")
    assert (again.trials, again.metrics, again.stale) == (2, 0, {})
    assert len(_runs(uri, "s")) == 3


def test_the_sync_command_reads_the_store_from_the_sweep(uri, tmp_path, capsys):
    from pipeline.sweep import write_tracking_file

    layout = ResultsLayout(tmp_path / "results" / "s")
    layout.write_plan(["trial0"])
    _finished_trial(layout, NoStore(), 0)
    write_tracking_file(layout, uri, "s")
    assert main(["sync-mlflow", str(layout.sweep_dir)]) == 0
    assert "1 trials' runs hold their records (5 metric points sent)" in capsys.readouterr().out
    assert [r.info.status for r in _runs(uri, "s")] == ["FINISHED", "FINISHED"]


def test_a_masked_password_is_written_masked(tmp_path):
    from pipeline.sweep import write_tracking_file
    from pipeline.tracking_sync import recorded_tracking

    layout = ResultsLayout(tmp_path)
    write_tracking_file(layout, "https://me:secret@mlflow.example:8443", "s")
    assert recorded_tracking(layout)["tracking_uri"] == "https://me:***@mlflow.example:8443"
    assert "secret" not in (tmp_path / "tracking.json").read_text()


def _closed_port() -> int:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_server_is_one_error_line_within_15_seconds(tmp_path):
    port = _closed_port()
    start = time.monotonic()
    with pytest.raises(tracking.TrackingError, match=f"cannot use http://127.0.0.1:{port}: cannot connect"):
        tracking.check_reachable(f"http://127.0.0.1:{port}")
    with pytest.raises(tracking.TrackingError, match=f"cannot use http://127.0.0.1:{port}: "):
        tracking.start_sweep(f"http://127.0.0.1:{port}", "s", tags={})  # MLflow's own timeouts: seconds
    assert time.monotonic() - start < 15  # the bound for the check itself
    # The command: one line, exit 2, before Ray starts (the bound here also covers importing torch
    # and MLflow on a loaded machine: generous).
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "sweep", str(ROOT / "conf" / "smoke.yaml"),
         f"tracking_uri=http://127.0.0.1:{port}", f"results_dir={tmp_path}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"error: tracking_uri: cannot use http://127.0.0.1:{port}: cannot connect to "
                                        f"127.0.0.1:{port} (Connection refused within 3 s)"]
    assert not (tmp_path / "session_latest").exists()
