"""A real Ray Tune sweep with one diverging block: it completes (exit 0), the diverged trial is counted apart in
the summary line, and `diverged` is in its records, the trials table, its MLflow run and the report."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from pipeline.__main__ import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY_LM = {"name": "causal_lm", "size": "tiny", "batch_size": 4, "seq_len": 32}
BLOCKS = [
    {"experiment": "convergence", "workload": TINY_LM, "steps": 3, "algorithms": {"sgd": {"lr": 0.1}}},
    # Adam at lr 1000: the loss goes from ~6 to ~1e7 in one update (far past the default divergence_factor).
    {"label": "blowup", "experiment": "convergence", "workload": TINY_LM, "steps": 3,
     "algorithms": {"adam": {"lr": 1000.0}}},
]
GOOD, BAD = "convergence-causal_lm-sgd-lr0.1-seed0", "blowup-convergence-causal_lm-adam-lr1000-seed0"


def test_a_sweep_with_a_diverging_block_completes(ray_session, tmp_path, capsys):
    config = tmp_path / "diverge.yaml"
    config.write_text(json.dumps({"name": "diverge", "device": "cpu", "experiments": BLOCKS}))
    results, db = tmp_path / "results", tmp_path / "mlflow.db"
    code = main(["sweep", str(config), f"results_dir={results}", f"tracking_uri=sqlite:///{db}"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"sweep diverge: 1 finished, 1 diverged, 0 interrupted, 0 failed, 0 done earlier, \d+ s", out), out
    assert "trials: 2 planned: 1 finished, 1 diverged, 0 failed, 0 missing" in out
    assert re.search(rf"^\[ended [12]/2\] diverged {BAD} ", out, re.MULTILINE), out  # the progress line too
    sweep_dir = results / "diverge"
    rows = {r["trial_id"]: r for r in pq.read_table(sweep_dir / "tables" / "trials.parquet").to_pylist()}
    assert (rows[BAD]["status"], rows[BAD]["diverged_step"]) == ("diverged", 1)
    assert (rows[GOOD]["status"], rows[GOOD]["diverged_step"]) == ("finished", None)
    summary = pq.read_table(sweep_dir / "tables" / "convergence_summary.parquet").to_pylist()
    summary = {r["algorithm"]: r for r in summary}
    assert (summary["adam"]["status"], summary["adam"]["final_loss_mean"], summary["adam"]["best_lr"]) == (
        "diverged", None, 1000.0)
    assert summary["sgd"]["status"] == "finished" and summary["sgd"]["final_loss_mean"] is not None
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("diverge").experiment_id], "tags.trial_id != ''")
    assert {r.data.tags["trial_id"]: (r.info.status, r.data.tags.get("status")) for r in runs} == {
        GOOD: ("FINISHED", "finished"), BAD: ("FINISHED", "diverged")}
    report = (sweep_dir / "report.md").read_text()
    assert f"| {BAD} | 1 |" in report and "| adam | [blowup] | 1000 (edge) | diverged |" in report, report
