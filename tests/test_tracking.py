"""MLflow tracking: URIs, batching, concurrent SQLite writers and a real tracking server over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline import tracking
from pipeline.config import Trial

ROOT = Path(__file__).resolve().parents[1]


def fake_trial(index: int = 0, steps: int = 10, **changes) -> Trial:
    return Trial.model_validate({
        "sweep": "t", "trial_id": f"trial{index}", "experiment": "convergence",
        "workload": {"name": "causal_lm", "size": "tiny"}, "algorithm": "adam", "clip_fraction": 0.5,
        "clip_target": "update", "lr": None, "hparams": {}, "seed": index, "steps": steps,
        "measure": {"at": [0, 5]}, **changes,
    })


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One SQLite store for the tests that need any store (building the schema takes seconds)."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    tracking.client(f"sqlite:///{db}")
    return db


def count_metric_rows(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as con:
        return dict(con.execute("select run_uuid, count(*) from metrics group by run_uuid").fetchall())


def test_tracking_uri_defaults_to_mlflow_db_and_is_made_absolute(tmp_path):
    assert tracking.resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking.resolve_tracking_uri("sqlite:///runs/m.db", tmp_path) == f"sqlite:///{tmp_path}/runs/m.db"
    assert tracking.resolve_tracking_uri("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"
    assert tracking.resolve_tracking_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"
    assert tracking.browse_hint("sqlite:////abs/m.db") == "mlflow ui --backend-store-uri sqlite:////abs/m.db"
    assert tracking.artifact_location("sqlite:////abs/m.db", "quick") == "file:///abs/mlruns/quick"
    assert tracking.artifact_location("http://127.0.0.1:5000", "quick") is None


def test_an_unusable_store_is_one_line_naming_tracking_uri(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(tracking.TrackingError) as info:
        tracking.start_sweep(f"sqlite:///{tmp_path}/afile/mlflow.db", "x", tags={})
    assert str(info.value).startswith(f"tracking_uri: cannot use sqlite:///{tmp_path}/afile/mlflow.db: ")
    assert "\n" not in str(info.value)


def test_run_names_lead_with_what_differs_and_tags_carry_every_setting():
    trial = fake_trial(3, algorithm="sgd", clip_fraction=0.1, clip_target="grad", lr=0.3, label="mom",
                       hparams={"momentum": 0.5})
    assert tracking.run_name(trial) == "sgd_clip0.1 lr0.3 s3 momentum=0.5 mom conve causal_lm"
    assert tracking.run_name(fake_trial(1)).startswith("adam_clipupdate0.5 relstep s1 ")
    tags = tracking.trial_tags(trial)
    assert {k: tags[k] for k in ("trajectory", "algorithm", "clip_fraction", "lr", "seed", "label", "experiment",
                                 "workload", "hparams.momentum", "steps", "trial_id")} == {
        "trajectory": "sgd_clip0.1", "algorithm": "sgd", "clip_fraction": "0.1", "lr": "0.3", "seed": "3",
        "label": "mom", "experiment": "convergence", "workload": "causal_lm", "hparams.momentum": "0.5",
        "steps": "10", "trial_id": "trial3"}
    assert tracking.trial_tags(fake_trial(0))["label"] == "-"  # a block without a label: one group, not absent


def test_the_experiment_opens_on_its_runs_with_a_saved_view_and_the_parent_keeps_the_report(store, tmp_path):
    import json

    from pipeline.layout import ResultsLayout

    uri = f"sqlite:///{store}"
    sweep_run = tracking.start_sweep(uri, "view", tags={})
    experiment = MlflowClient(uri).get_experiment(sweep_run.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(experiment.tags["mlflow.sharedViewState.trials"])
    assert "tags.`trajectory`" in view["selectedColumns"] and view["runsHiddenMode"] == "SHOW_ALL"
    assert sweep_run.browse_hint().endswith(
        f"/#/experiments/{sweep_run.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=trials")
    layout = ResultsLayout(tmp_path / "view")
    for path in (layout.report_path, layout.sweep_dir / "report.html", layout.table_path("convergence"),
                 layout.figures_dir / "loss.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(path.name)
    (layout.trials_dir / "t").mkdir(parents=True)  # not a report file
    assert sweep_run.log_report(layout) == 4
    client = MlflowClient(uri)
    listed = {a.path for a in client.list_artifacts(sweep_run.parent_run_id)}
    assert listed == {"report.md", "report.html", "tables", "figures"}
    assert [a.path for a in client.list_artifacts(sweep_run.parent_run_id, "tables")] == ["tables/convergence.parquet"]


def test_flatten_and_tags_describe_the_trial():
    flat = tracking.flatten(fake_trial(3).params())
    assert flat["workload.name"] == "causal_lm" and flat["measure.at"] == "[0, 5]" and flat["lr"] == "None"
    tags = tracking.trial_tags(fake_trial(3))
    assert tags["workload"] == "causal_lm" and tags["lr"] == "relative_step" and tags["seed"] == "3"
    assert tags["trajectory"] == "adam_clipupdate0.5" and tags["clip_target"] == "update"


def test_metric_stride_keeps_sparse_metrics_and_every_curve_end():
    stride = tracking.MetricStride(steps=1000, max_points=200)
    assert stride.stride == 5
    logged: dict[str, list[int]] = {}
    for step in range(1000):
        metrics = {"train_loss": 1.0} | ({"sharpness/sgd": 2.0} if step % 20 == 0 else {})
        for key in stride.select(step, metrics):
            logged.setdefault(key, []).append(step)
    for key, (step, _) in stride.leftovers().items():
        logged[key].append(step)
    assert logged["train_loss"] == list(range(0, 1000, 5)) + [999]
    assert logged["sharpness/sgd"] == list(range(0, 1000, 20))
    short = tracking.MetricStride(steps=50)
    assert all(short.select(s, {"a": 0.0}) for s in range(50))


def test_a_trial_run_logs_every_stride_th_step_and_the_last(store, monkeypatch):
    monkeypatch.setattr(tracking, "FLUSH_METRICS", 25)  # several batches: flushes must not add points
    sweep_run = tracking.open_tracker(f"sqlite:///{store}").start_sweep("stride", tags={})
    run = sweep_run.start_trial(fake_trial(steps=1000))
    for step in range(1000):
        run.log(step, {"train_loss": float(step)} | ({"sharpness/sgd": 1.0} if step % 100 == 0 else {}))
    run.end()
    history = MlflowClient(sweep_run.uri).get_metric_history(run.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(0, 1000, 5)) + [999]
    assert all(m.value == m.step for m in history)
    assert len(MlflowClient(sweep_run.uri).get_metric_history(run.run_id, "sharpness/sgd")) == 10


def test_trial_run_splits_batches_at_mlflows_limits(store, tmp_path):
    uri = f"sqlite:///{store}"
    sweep_run = tracking.start_sweep(uri, "limits", tags={})
    trial = fake_trial(steps=2, hparams={f"h{i}": i for i in range(150)})  # > 100 params
    run = tracking.MlflowTrialRun(sweep_run, trial)
    run.log(0, {f"m{i}": float(i) for i in range(2500)})  # > 1000 metrics in one step
    (tmp_path / "a.txt").write_text("x")
    run.log_artifacts([tmp_path / "a.txt"], "records")
    run.end()
    client = MlflowClient(uri)
    child = client.get_run(run.run_id)
    assert child.data.tags["mlflow.parentRunId"] == sweep_run.parent_run_id
    assert child.info.status == "FINISHED" and len(child.data.params) == len(tracking.flatten(trial.params()))
    assert count_metric_rows(store)[run.run_id] == 2500
    assert [a.path for a in client.list_artifacts(run.run_id, "records")] == ["records/a.txt"]
    assert (store.parent / "mlruns" / "limits" / run.run_id / "artifacts" / "records" / "a.txt").is_file()
    assert run.metrics_logged == 2500 and run.seconds > 0


def test_retry_locked_retries_only_lock_errors(monkeypatch):
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    calls = []

    def flaky(fails: int, message: str = "(sqlite3.OperationalError) database is locked"):
        calls.append(1)
        if len(calls) <= fails:
            raise RuntimeError(message)
        return "ok"

    assert tracking.retry_locked(flaky, 3) == "ok" and len(calls) == 4
    calls.clear()
    with pytest.raises(RuntimeError, match="locked"):
        tracking.retry_locked(flaky, tracking.LOCK_RETRIES + 1)
    calls.clear()
    with pytest.raises(RuntimeError, match="no such table"):
        tracking.retry_locked(flaky, 1, "no such table: metrics")
    assert len(calls) == 1


# One process imports MLflow once, then forks 8 writers (no client exists before the fork):
# 8 processes with their own SQLite connections, started together by a barrier.
WRITERS = """
import multiprocessing, sys
from pipeline import tracking
from pipeline.config import Trial
uri, experiment_id, parent, n, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
tracking.FLUSH_METRICS = 40  # many small transactions: as much lock contention as we can make

def write(index, barrier, queue):
    trial = Trial.model_validate(
        {"sweep": "c", "trial_id": f"t{index}", "experiment": "convergence", "workload": {"name": "causal_lm"},
         "algorithm": "sgd", "clip_fraction": 0.0, "clip_target": "grad", "lr": 0.1, "seed": index, "steps": steps})
    barrier.wait()
    run = tracking.MlflowSweepRun(uri, experiment_id, parent).start_trial(trial)
    for step in range(steps):
        run.log(step, {"loss": step * 0.5, "index": float(index)})
    run.end()
    queue.put(run.run_id)

fork = multiprocessing.get_context("fork")
barrier, queue = fork.Barrier(n), fork.Queue()
procs = [fork.Process(target=write, args=(i, barrier, queue)) for i in range(n)]
for p in procs:
    p.start()
run_ids = [queue.get(timeout=300) for _ in procs]
for p in procs:
    p.join()
print(" ".join(run_ids))
sys.exit(max(p.exitcode for p in procs))
"""


@pytest.mark.slow
def test_eight_concurrent_writers_lose_nothing_on_one_fresh_sqlite_store(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    sweep_run = tracking.start_sweep(uri, "concurrent", tags={})  # the driver builds the schema first
    steps, n = 150, 8
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", WRITERS, uri, sweep_run.experiment_id, sweep_run.parent_run_id,
                           str(n), str(steps)], capture_output=True, text=True, env=env, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    run_ids = done.stdout.split()
    assert len(set(run_ids)) == n
    assert count_metric_rows(db) == {run_id: 2 * steps for run_id in run_ids}
    client = MlflowClient(uri)
    children = client.search_runs([sweep_run.experiment_id], f"tags.mlflow.parentRunId = '{sweep_run.parent_run_id}'")
    assert sorted(r.info.run_id for r in children) == sorted(run_ids)
    assert all(r.info.status == "FINISHED" for r in children)
    history = client.get_metric_history(run_ids[3], "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, s * 0.5) for s in range(steps)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_a_real_trial_logs_to_an_mlflow_server_over_http(mlflow_server, tmp_path):
    from pipeline.config import load_config
    from pipeline.layout import ResultsLayout
    from pipeline.runner import run_trial
    from pipeline.sink import ResultsSink

    config = load_config(ROOT / "conf" / "smoke.yaml", [f"tracking_uri={mlflow_server}", "experiments.1.steps=3"])
    trial = next(t for t in config.trials if t.experiment == "convergence")
    sweep_run = tracking.open_tracker(config.tracking_uri).start_sweep("http-smoke", tags={})
    summary = run_trial(trial, ResultsSink(ResultsLayout(tmp_path), sweep_run))
    sweep_run.end("FINISHED")

    client = MlflowClient(mlflow_server)  # the REST client
    runs = client.search_runs([sweep_run.experiment_id])
    assert len(runs) == 2
    child = next(r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep_run.parent_run_id)
    assert child.data.tags["trial_id"] == trial.trial_id and child.info.status == "FINISHED"
    assert child.info.run_name == tracking.run_name(trial) == "sgd lr0.1 s0 conve causal_lm"
    assert child.data.tags["algorithm"] == "sgd" and child.data.params["workload.name"] == "causal_lm"
    assert [m.step for m in client.get_metric_history(child.info.run_id, "train_loss")] == [0, 1, 2]
    artifacts = [a.path for a in client.list_artifacts(child.info.run_id, "records")]
    assert artifacts == ["records/convergence.parquet", "records/trials.parquet"]
    assert summary["metrics_logged"] == 3 + 2  # train_loss every step, test_loss at 0 and the last
