"""A sweep on a real two-node Ray cluster (head and worker in their own network namespaces, joined
by a veth pair, each with its own disk): every planned trial's records and MLflow run arrive at the
driver, trials run on both nodes, by `python -m pipeline sweep ray.address=...` and by `ray job
submit` (with and without a stale ~/.ray/auth_token), and a trial whose records are lost fails."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from pipeline.config import load_config
from tests.cluster.cluster_testing import ROOT, TwoNodeCluster, can_run, records_by_node

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.cluster,
              pytest.mark.skipif(can_run() is not None, reason=f"two-node cluster: {can_run()}")]

SMOKE = ROOT / "conf" / "smoke.yaml"
PLANNED = [t.trial_id for t in load_config(SMOKE).trials]


def _settings(base: Path) -> list[str]:
    """Results and the default (SQLite) store on the head's own disk."""
    return [f"results_dir={base}/head/results", f"tracking_uri=sqlite:///{base}/head/mlflow.db"]


def _check_sweep(base: Path, cluster: TwoNodeCluster, out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    sweep_dir = base / "head" / "results" / "smoke"
    # Every planned trial's records are in the driver's tables, once.
    for table in ("trials", "convergence", "sharpness"):
        ids = pq.read_table(sweep_dir / "tables" / f"{table}.parquet").column("trial_id").unique().to_pylist()
        assert sorted(ids) == sorted(t for t in PLANNED if table == "trials" or t.startswith(table)), table
    assert f"records: {len(PLANNED)} of {len(PLANNED)} planned trials" in out.stdout
    # Trials ran on both nodes.
    by_node = records_by_node(sweep_dir)
    assert set(by_node) == {cluster.head.ip, cluster.worker.ip}, by_node
    assert sum(len(v) for v in by_node.values()) == len(PLANNED)
    # One MLflow run per trial, with its metrics, in the driver's store; nothing on the worker.
    client = MlflowClient(f"sqlite:///{base}/head/mlflow.db")
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    children = {r.data.tags["trial_id"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert sorted(children) == sorted(PLANNED)
    assert all(r.info.status == "FINISHED" and "train_loss" in r.data.metrics for r in children.values())
    assert not list((base / "worker").rglob("mlflow.db")) and not list((base / "worker").rglob("*.parquet"))


def test_sweep_with_ray_address_on_two_nodes(tmp_path):
    with TwoNodeCluster(tmp_path) as cluster:
        out = cluster.head.run("python", "-m", "pipeline", "sweep", str(SMOKE), f"ray.address={cluster.gcs}",
                               *_settings(tmp_path), timeout=900)
        _check_sweep(tmp_path, cluster, out)


def test_ray_job_submit_with_a_stale_auth_token(tmp_path):
    """README's command: `ray job submit -- python jobs/sweep.py CONFIG` from the project directory."""
    with TwoNodeCluster(tmp_path, stale_token=True) as cluster:
        out = cluster.head.run("ray", "job", "submit", f"--address={cluster.dashboard}", "--",
                               "python", "jobs/sweep.py", "conf/smoke.yaml", *_settings(tmp_path), timeout=900)
        _check_sweep(tmp_path, cluster, out)


def test_lost_records_fail_the_sweep_and_are_named(tmp_path):
    """Records of trials that ran on the worker vanish from the results directory while the sweep
    runs: the sweep exits non-zero and names exactly those trials."""
    sweep_dir = tmp_path / "head" / "results" / "smoke"
    with TwoNodeCluster(tmp_path) as cluster:
        proc = subprocess.Popen(
            cluster.head.command("python", "-m", "pipeline", "sweep", str(SMOKE), f"ray.address={cluster.gcs}",
                                 *_settings(tmp_path)),
            env=cluster.head.env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lost: set[str] = set()
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            for trials in sweep_dir.glob("trials/*/records/trials.parquet"):
                row = pq.read_table(trials).to_pylist()[0]
                done = (trials.parent.parent / "trial.json").is_file()
                if row["node_ip"] == cluster.worker.ip and len(lost) < 2 and done:
                    for path in trials.parent.glob("*.parquet"):
                        path.unlink()
                    lost.add(row["trial_id"])
            time.sleep(0.1)
        stdout, stderr = proc.communicate(timeout=60)
    assert lost, "no trial ran on the worker"
    assert proc.returncode == 1, stdout + stderr
    named = {line.split()[1].rstrip(":") for line in stderr.splitlines() if line.startswith("FAILED ")}
    assert named == lost, stderr
    assert all("records are not in" in line for line in stderr.splitlines() if line.startswith("FAILED "))
    assert f"records: {len(PLANNED) - len(lost)} of {len(PLANNED)} planned trials; missing:" in stdout
