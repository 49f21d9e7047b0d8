"""A trial on the worker node of a real two-node cluster (no shared disk) whose Ray worker is SIGKILLed
mid-trial: Tune retries it, and it resumes from the checkpoint it had sent to the results sink on the head;
exit 0, every step recorded once, one MLflow run per trial, none left RUNNING."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from tests.cluster.cluster_testing import ROOT, TwoNodeCluster, can_run
from tests.retry_testing import STEPS, VICTIM, checkpoint_step, retry_config

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.cluster,
              pytest.mark.skipif(can_run() is not None, reason=f"two-node cluster: {can_run()}")]

CONFIG = retry_config("resources_per_trial: {cpu: 1, custom: {worker_node: 1}}")


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def test_a_trial_killed_on_the_worker_node_resumes_from_the_checkpoint_on_the_head(tmp_path):
    config = tmp_path / "retry.yaml"
    config.write_text(CONFIG)
    sweep_dir = tmp_path / "head" / "results" / "retry"
    checkpoint, done = sweep_dir / "trials" / VICTIM / "checkpoint.pt", sweep_dir / "trials" / VICTIM / "trial.json"
    with TwoNodeCluster(tmp_path) as cluster:
        proc = subprocess.Popen(
            cluster.head.command("python", "-m", "pipeline", "sweep", str(config), f"ray.address={cluster.gcs}",
                                 f"results_dir={tmp_path}/head/results", f"tracking_uri=sqlite:///{tmp_path}/head/mlflow.db"),
            env=cluster.head.env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed = None
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline and killed is None:
            step = checkpoint_step(checkpoint)
            workers = [p for p in cluster.worker.pids() if _title(p).startswith("ray::ImplicitFunc")]
            if step >= 20 and len(workers) == 1 and not done.exists():
                os.kill(workers[0], signal.SIGKILL)
                killed = (step, time.time())
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=600)
    print(stdout, stderr)
    assert killed is not None, "the trial's worker was not killed mid-trial"
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert f"[retrying] {VICTIM} after failure 1" in stdout

    # Records: on the worker node, every step once; no checkpoint left behind.
    for seed in (0, 1):
        trial_id = VICTIM.replace("seed0", f"seed{seed}")
        rows = pq.read_table(sweep_dir / "trials" / trial_id / "records" / "convergence.parquet").to_pylist()
        assert [r["step"] for r in rows] == list(range(STEPS)), trial_id
        node = pq.read_table(sweep_dir / "trials" / trial_id / "records" / "trials.parquet").to_pylist()[0]
        assert node["node_ip"] == cluster.worker.ip
        assert not (sweep_dir / "trials" / trial_id / "checkpoint.pt").exists()
    # The resumed attempt's final result (Tune's result.json on the driver): where and when it resumed.
    results = [json.loads(line) for path in (sweep_dir / "ray").rglob(f"{VICTIM}/result.json")
               for line in path.read_text().splitlines() if line.strip()]
    final = next(r for r in reversed(results) if "resumed_at" in r)
    assert killed[0] <= final["resumed_at"] < STEPS
    print(f"two nodes: kill at checkpoint step {killed[0]}; resumed at step {final['resumed_at']}; "
          f"kill -> resumed: {final['resumed_time'] - killed[1]:.1f} s")

    client = MlflowClient(f"sqlite:///{tmp_path}/head/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("retry").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2
    for run in children:
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == list(range(STEPS))
