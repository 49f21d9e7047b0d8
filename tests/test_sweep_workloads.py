"""A real sweep over all four workloads and the smoothness experiment, through Ray and MLflow."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from pipeline import sweep
from pipeline.config import expand, load_config
from pipeline.optim import DEFAULT_PROBES

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CONFIG = Path(__file__).resolve().parents[1] / "conf" / "smoke_workloads.yaml"
WORKLOADS = {"causal_lm", "translation", "classification", "image"}


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workloads")
    config = load_config(CONFIG, [f"results_dir={tmp / 'results'}",
                                  f"tracking_uri=sqlite:///{tmp / 'mlflow.db'}"])
    plan = sweep.prepare(config)
    outcome = sweep.run(plan, log=lambda line: None)
    return config, plan, outcome


def test_every_workload_and_the_smoothness_trial_finish(run):
    config, plan, outcome = run
    assert outcome.failed == {} and outcome.aggregate_error is None
    assert sorted(outcome.finished) == sorted(t["trial_id"] for t in expand(config))
    client = MlflowClient(plan.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(config.name).experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.tags["workload"] for r in children) == sorted(
        [*WORKLOADS, "classification"])
    assert all(r.info.status == "FINISHED" for r in runs)


def test_sharpness_table_has_every_probe_on_every_workload(run):
    _, plan, _ = run
    table = pq.read_table(plan.sweep_dir / "tables" / "sharpness.parquet").to_pandas()
    assert set(table["workload"]) == WORKLOADS
    labels = {p.label for p in DEFAULT_PROBES}
    for workload, rows in table.groupby("workload"):
        assert set(rows["probe"]) == labels and set(rows["step"]) == {0, 2}, workload
        sgd = rows[rows["probe"] == "sgd"]
        assert (sgd["ratio_to_sgd"] == 1.0).all()


def test_smoothness_and_table8(run):
    _, plan, _ = run
    rows = pq.read_table(plan.sweep_dir / "tables" / "smoothness.parquet").to_pandas()
    assert list(rows["step"]) == [0, 2] and (rows["workload"] == "classification").all()
    assert ((rows["ell"] > 0) & (rows["ell"] <= rows["L"])).all()
    assert (rows["n_samples"] == 4).all() and (rows["outlier_factor"] == 4.0).all()
    table8 = pq.read_table(plan.sweep_dir / "tables" / "table8_smoothness.parquet").to_pandas()
    assert len(table8) == 2
    assert "Table 8" in (plan.sweep_dir / "report.md").read_text()
