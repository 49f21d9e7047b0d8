"""A real Ray Tune sweep of conf/smoke.yaml: trials, MLflow runs, Parquet records, aggregate tables."""

from __future__ import annotations

import hashlib
import math
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from pipeline import sweep, tracking
from pipeline.__main__ import main
from pipeline.config import ConfigError, expand, load_config
from pipeline.optim import DEFAULT_PROBES
from pipeline.schemas import OUTPUT_TABLES, TRIAL_TABLES as TABLE_SPECS

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "conf" / "smoke.yaml"
TRIAL_TABLES = {"sharpness": {"sharpness", "landscape", "histogram"}, "convergence": {"convergence"}}


@pytest.fixture(scope="module")
def smoke(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    overrides = [f"results_dir={tmp / 'results'}", f"tracking_uri=sqlite:///{tmp / 'mlflow.db'}"]
    config = load_config(SMOKE, overrides)
    plan = sweep.prepare(config)
    lines: list[str] = []
    outcome = sweep.run(plan, log=lines.append)
    return SimpleNamespace(config=config, overrides=overrides, plan=plan, outcome=outcome, lines=lines,
                           db=tmp / "mlflow.db", trials={t["trial_id"]: t for t in expand(config)})


def records(smoke, trial_id: str, table: str):
    return pq.read_table(smoke.plan.sweep_dir / "trials" / trial_id / "records" / f"{table}.parquet")


def test_every_trial_finishes(smoke):
    assert smoke.outcome.failed == {}
    assert sorted(smoke.outcome.finished) == sorted(smoke.trials) and len(smoke.trials) == 8
    assert smoke.outcome.aggregate_error is None
    assert sum("finished" in line for line in smoke.lines) == len(smoke.trials)


def test_mlflow_has_one_child_run_per_trial_under_one_parent(smoke):
    client = MlflowClient(smoke.plan.tracking_uri)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    assert sorted(r.info.run_name for r in children) == sorted(smoke.trials)
    for run in children:
        trial = smoke.trials[run.info.run_name]
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert (tags["workload"], tags["experiment"], tags["algorithm"]) == ("causal_lm", trial["experiment"], trial["algorithm"])
        assert (float(tags["clip_fraction"]), float(tags["lr"]), int(tags["seed"])) == (trial["clip_fraction"], trial["lr"], trial["seed"])
        assert tags["trajectory"] == ("sgd_clip0.1" if trial["clip_fraction"] else trial["algorithm"])
        assert run.data.params["steps"] == str(trial["steps"]) and run.data.params["workload.seq_len"] == "32"
        assert [a.path for a in client.list_artifacts(run.info.run_id, "records")] == sorted(
            f"records/{t}.parquet" for t in TRIAL_TABLES[trial["experiment"]])
        assert (smoke.db.parent / "mlruns" / "smoke" / run.info.run_id / "artifacts" / "records").is_dir()


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def _same(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    return len(a) == len(b) and all(s == t and (x == y or math.isnan(x) and math.isnan(y)) for (s, x), (t, y) in zip(a, b))


def test_mlflow_step_metrics_are_the_records_values_each_logged_once(smoke):
    client = MlflowClient(smoke.plan.tracking_uri)
    with sqlite3.connect(smoke.db) as con:
        stored = dict(con.execute("select run_uuid, count(*) from metrics group by run_uuid").fetchall())
    for run in client.search_runs([client.get_experiment_by_name("smoke").experiment_id], "tags.trial_id != ''"):
        trial_id, run_id = run.info.run_name, run.info.run_id
        trial = smoke.trials[trial_id]
        keys = set(run.data.metrics)
        # Every value stored once: the store's row count is the sum of the per-key histories.
        assert stored[run_id] == sum(len(client.get_metric_history(run_id, k)) for k in keys)
        if trial["experiment"] == "convergence":
            rows = records(smoke, trial_id, "convergence").to_pylist()
            assert len(rows) == trial["steps"]
            assert _same(_history(client, run_id, "train_loss"), [(r["step"], r["train_loss"]) for r in rows])
            tested = [(r["step"], r["test_loss"]) for r in rows if r["test_loss"] is not None]
            assert [s for s, _ in tested] == [0, 3, 5]  # eval_every 3, and the last step
            assert _same(_history(client, run_id, "test_loss"), tested)
        else:
            assert len(_history(client, run_id, "train_loss")) == trial["steps"] + 1
            rows = records(smoke, trial_id, "sharpness").to_pylist()
            for probe in {r["probe"] for r in rows}:
                mine = [(r["step"], r["sharpness"]) for r in rows if r["probe"] == probe]
                assert _same(_history(client, run_id, f"sharpness/{probe}"), sorted(mine))


def test_trial_records_have_the_documented_schemas_and_row_counts(smoke):
    probes = len(DEFAULT_PROBES)
    for trial_id, trial in smoke.trials.items():
        folder = smoke.plan.sweep_dir / "trials" / trial_id / "records"
        assert {p.stem for p in folder.glob("*.parquet")} == TRIAL_TABLES[trial["experiment"]]
        measure = trial["measure"]
        points = len(measure.get("at", []))
        expected = {
            "convergence": trial["steps"],
            "sharpness": points * probes,
            "landscape": points * probes * len(measure.get("landscape_offsets", [])),
            "histogram": points * probes * measure.get("histogram_bins", 0),
        }
        for table in TRIAL_TABLES[trial["experiment"]]:
            data = records(smoke, trial_id, table)
            assert data.schema.remove_metadata() == TABLE_SPECS[table].schema.remove_metadata()
            assert data.num_rows == expected[table], (trial_id, table)
            assert set(data.column("trial_id").to_pylist()) == {trial_id}
            assert set(data.column("seed").to_pylist()) == {trial["seed"]}


def test_aggregate_tables_have_their_schemas_and_every_trials_rows(smoke):
    tables = smoke.plan.sweep_dir / "tables"
    written = {p.stem for p in tables.glob("*.parquet")}
    assert {"sharpness", "landscape", "histogram", "convergence"} <= written
    for name in written:
        data = pq.read_table(tables / f"{name}.parquet")
        assert data.schema.remove_metadata() == OUTPUT_TABLES[name].schema.remove_metadata()
    for table in ("sharpness", "convergence"):
        per_trial = sum(records(smoke, t, table).num_rows for t, tr in smoke.trials.items()
                        if table in TRIAL_TABLES[tr["experiment"]])
        assert pq.read_table(tables / f"{table}.parquet").num_rows == per_trial
    assert (smoke.plan.sweep_dir / "report.md").is_file()
    assert list((smoke.plan.sweep_dir / "figures").glob("*.png"))


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.parquet"))}


def test_aggregating_again_gives_byte_identical_tables(smoke, capsys):
    before = _digests(smoke.plan.sweep_dir / "tables")
    assert main(["aggregate", str(smoke.plan.sweep_dir)]) == 0
    assert _digests(smoke.plan.sweep_dir / "tables") == before and before


def test_a_rerun_skips_finished_trials_and_refuses_a_changed_config(smoke):
    again = sweep.prepare(load_config(SMOKE, smoke.overrides))
    assert again.trials == [] and sorted(again.done) == sorted(smoke.trials)
    with pytest.raises(ConfigError, match="already holds trial .* with a different config"):
        sweep.prepare(load_config(SMOKE, [*smoke.overrides, "experiments.1.steps=7"]))


def test_a_failed_trial_is_named_and_the_finished_ones_are_aggregated(ray_session, tmp_path, capsys):
    good = "{experiment: convergence, workload: {name: causal_lm, size: tiny, batch_size: 4, seq_len: 32}, steps: 2, algorithms: {sgd: {lr: 0.1}}}"
    bad = good.replace("batch_size: 4", "batch_size: 100000").replace("{experiment:", "{label: broken, experiment:")
    code = main(["sweep", str(SMOKE), f"results_dir={tmp_path}", f"tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                 "name=failing", f"experiments=[{good}, {bad}]"])
    out, err = capsys.readouterr()
    assert code == 1
    failed = [line for line in err.splitlines() if line.startswith("FAILED ")]
    assert len(failed) == 1 and failed[0].startswith("FAILED broken-convergence-causal_lm-sgd-lr0.1-seed0: ")
    assert "batch_size" in failed[0] and "Traceback" not in err
    error_file = tmp_path / "failing" / "trials" / "broken-convergence-causal_lm-sgd-lr0.1-seed0" / "error.txt"
    assert failed[0].endswith(f"(traceback: {error_file})") and "ValueError" in error_file.read_text()
    assert pq.read_table(tmp_path / "failing" / "tables" / "convergence.parquet").num_rows == 2
    assert "mlflow ui --backend-store-uri" in out
    client = MlflowClient(tracking.resolve_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db"))
    runs = client.search_runs([client.get_experiment_by_name("failing").experiment_id])
    statuses = {r.info.run_name: r.info.status for r in runs}
    assert statuses == {"failing": "FAILED", "convergence-causal_lm-sgd-lr0.1-seed0": "FINISHED",
                        "broken-convergence-causal_lm-sgd-lr0.1-seed0": "FAILED"}
