"""One real Ray Tune sweep, through the command line: trials, MLflow runs, Parquet records, aggregate tables,
the report, and a trial that fails.

The sweep is conf/smoke.yaml, then conf/smoke_workloads.yaml (all four workloads and the smoothness
experiment), then one block whose trial fails, run once for this whole module so that the suite starts
Ray as few times as possible. The tests below check each part as if it had run on its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import re
import sqlite3
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from pipeline import sweep, tracking, tracking_view
from pipeline.__main__ import main
from pipeline.config import ConfigError, load_config
from pipeline.optim import DEFAULT_PROBES
from pipeline.runner import plan_sweep
from pipeline.schemas import OUTPUT_TABLES
from pipeline.schemas import TRIAL_TABLES as TABLE_SPECS

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "conf" / "smoke.yaml"
SMOKE_WORKLOADS = ROOT / "conf" / "smoke_workloads.yaml"
# Every trial also writes its `trials` row (the node that ran it, its wall time).
TRIAL_TABLES = {"sharpness": {"sharpness", "landscape", "histogram", "landscape_summary", "topk_share", "trials"},
                "convergence": {"convergence", "trials"}}
WORKLOADS = {"causal_lm", "translation", "classification", "image"}
# A trial that fails when it builds its workload: attention heads that do not divide the width, which
# only the model's own constructor checks (a batch larger than the corpus is refused before Ray now).
BROKEN_BLOCK = ("{label: broken, experiment: convergence, workload: {name: causal_lm, size: tiny, "
                "seq_len: 32, model: {num_heads: 3}}, steps: 2, algorithms: {sgd: {lr: 0.1}}}")
BROKEN = "broken-convergence-causal_lm-sgd-lr0.1-seed0"
# conf/smoke_workloads.yaml's causal_lm block would repeat a trial id of conf/smoke.yaml's first block.
WORKLOADS_LABEL = "experiments.2.label=workloads"


@pytest.fixture(scope="module")
def smoke(ray_session, tmp_path_factory):
    """`python -m pipeline sweep` of both smoke configs and the broken block, run once."""
    tmp = tmp_path_factory.mktemp("smoke")
    top = tmp / "smoke_all.yaml"
    include = ", ".join(json.dumps(str(path)) for path in (SMOKE, SMOKE_WORKLOADS))
    top.write_text(f"name: smoke\ndevice: cpu\ninclude: [{include}]\nexperiments: [{BROKEN_BLOCK}]\n")
    results = tmp / "results"
    overrides = [f"results_dir={results}", f"tracking_uri=sqlite:///{tmp / 'mlflow.db'}", WORKLOADS_LABEL]
    seen: dict = {}
    real_run = sweep.run

    def run(plan, **kwargs):  # the CLI's own call, recorded: the plan and the outcome it returns
        seen["plan"] = plan
        seen["outcome"] = real_run(plan, **kwargs)
        return seen["outcome"]

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        patch.setattr(sweep, "run", run)
        code = main(["sweep", str(top), *overrides])
    print(out.getvalue())
    print(err.getvalue(), file=sys.stderr)
    assert "outcome" in seen, f"the sweep did not run (exit {code}): {err.getvalue()}"
    config = load_config(top, overrides)
    trials = {t.trial_id: t for t in config.trials}
    smoke_ids = {t.trial_id for t in load_config(SMOKE).trials}
    return SimpleNamespace(
        config=config, top=top, overrides=overrides, results=results, plan=seen["plan"], outcome=seen["outcome"],
        code=code, out=out.getvalue(), err=err.getvalue(), lines=out.getvalue().splitlines(), db=tmp / "mlflow.db",
        trials=trials,
        smoke_trials={i: t for i, t in trials.items() if i in smoke_ids},
        workload_trials={i: t for i, t in trials.items() if i not in smoke_ids and i != BROKEN},
    )


def records(smoke, trial_id: str, table: str):
    return pq.read_table(smoke.plan.layout.sweep_dir / "trials" / trial_id / "records" / f"{table}.parquet")


# --- conf/smoke.yaml -------------------------------------------------------------------------------------


def test_every_trial_finishes(smoke):
    assert smoke.outcome.failed.keys() == {BROKEN}  # the one trial made to fail (tested below)
    assert sorted(smoke.outcome.finished) == sorted(set(smoke.trials) - {BROKEN})
    assert len(smoke.smoke_trials) == 8
    assert len(smoke.workload_trials) == len(load_config(SMOKE_WORKLOADS).trials) == 5
    # The CLI runs the aggregate stage and the report after the sweep: no error, and where they are.
    assert "aggregate:" not in smoke.err and f"report:  {smoke.plan.layout.report_path}" in smoke.lines
    assert smoke.plan.layout.report_html_path.is_file() and smoke.plan.layout.config_path.is_file()
    finished = [line for line in smoke.lines if re.match(r"\[ended \d+/\d+\] finished ", line)]
    assert len(finished) == len(smoke.outcome.finished)


def test_mlflow_has_one_child_run_per_trial_under_one_parent(smoke):
    client = MlflowClient(smoke.plan.tracker.uri)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FAILED"  # FINISHED but for the broken trial
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    assert sorted(r.data.tags["trial_id"] for r in children) == sorted(smoke.trials)
    smoke_children = [r for r in children if r.data.tags["trial_id"] in smoke.smoke_trials]
    assert len(smoke_children) == len(smoke.smoke_trials)
    for run in smoke_children:
        trial = smoke.smoke_trials[run.data.tags["trial_id"]]
        assert run.info.status == "FINISHED" and run.info.run_name == tracking_view.run_name(trial)
        tags = run.data.tags
        assert (tags["workload"], tags["experiment"], tags["algorithm"]) == ("causal_lm", trial.experiment,
                                                                              trial.algorithm)
        assert (float(tags["clip_fraction"]), float(tags["lr"]), int(tags["seed"])) == (trial.clip_fraction, trial.lr,
                                                                                         trial.seed)
        assert tags["trajectory"] == ("sgd_clip0.1" if trial.clip_fraction else trial.algorithm)
        assert run.data.params["steps"] == str(trial.steps) and run.data.params["workload.seq_len"] == "32"
        assert [a.path for a in client.list_artifacts(run.info.run_id, "records")] == sorted(
            f"records/{t}.parquet" for t in TRIAL_TABLES[trial.experiment])
        assert (smoke.db.parent / "mlruns" / "smoke" / run.info.run_id / "artifacts" / "records").is_dir()


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def _same(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    return len(a) == len(b) and all(
        s == t and (x == y or math.isnan(x) and math.isnan(y)) for (s, x), (t, y) in zip(a, b))


def test_mlflow_step_metrics_are_the_records_values_each_logged_once(smoke):
    client = MlflowClient(smoke.plan.tracker.uri)
    with sqlite3.connect(smoke.db) as con:
        stored = dict(con.execute("select run_uuid, count(*) from metrics group by run_uuid").fetchall())
    checked = 0
    for run in client.search_runs([client.get_experiment_by_name("smoke").experiment_id], "tags.trial_id != ''"):
        trial_id, run_id = run.data.tags["trial_id"], run.info.run_id
        if trial_id not in smoke.smoke_trials:
            continue
        checked += 1
        trial = smoke.smoke_trials[trial_id]
        keys = set(run.data.metrics)
        # Every value stored once: the store's row count is the sum of the per-key histories.
        assert stored[run_id] == sum(len(client.get_metric_history(run_id, k)) for k in keys)
        if trial.experiment == "convergence":
            rows = records(smoke, trial_id, "convergence").to_pylist()
            assert len(rows) == trial.steps
            assert _same(_history(client, run_id, "train_loss"), [(r["step"], r["train_loss"]) for r in rows])
            tested = [(r["step"], r["test_loss"]) for r in rows if r["test_loss"] is not None]
            assert [s for s, _ in tested] == [0, 3, 5]  # eval_every 3, and the last step
            assert _same(_history(client, run_id, "test_loss"), tested)
        else:
            assert len(_history(client, run_id, "train_loss")) == trial.steps + 1
            rows = records(smoke, trial_id, "sharpness").to_pylist()
            for probe in {r["probe"] for r in rows}:
                mine = [(r["step"], r["sharpness"]) for r in rows if r["probe"] == probe]
                assert _same(_history(client, run_id, f"sharpness/{probe}"), sorted(mine))
    assert checked == len(smoke.smoke_trials)


def test_trial_records_have_the_documented_schemas_and_row_counts(smoke):
    probes = len(DEFAULT_PROBES)
    for trial_id, trial in smoke.smoke_trials.items():
        folder = smoke.plan.layout.sweep_dir / "trials" / trial_id / "records"
        assert {p.stem for p in folder.glob("*.parquet")} == TRIAL_TABLES[trial.experiment]
        measure = trial.measure
        points = len(measure.at or [])
        expected = {
            "convergence": trial.steps,
            "sharpness": points * probes,
            "landscape": points * probes * len(measure.landscape_offsets),
            "histogram": points * probes * (measure.histogram_bins + 2),  # + below and above the range
            "landscape_summary": points * probes,
            "topk_share": points * len(measure.share_fractions),
            "trials": 1,
        }
        for table in TRIAL_TABLES[trial.experiment]:
            data = records(smoke, trial_id, table)
            assert data.schema.remove_metadata() == TABLE_SPECS[table].schema.remove_metadata()
            assert table not in expected or data.num_rows == expected[table], (trial_id, table)  # topk_share: per k
            assert set(data.column("trial_id").to_pylist()) == {trial_id}
            assert set(data.column("seed").to_pylist()) == {trial.seed}


def test_aggregate_tables_have_their_schemas_and_every_trials_rows(smoke):
    tables = smoke.plan.layout.sweep_dir / "tables"
    written = {p.stem for p in tables.glob("*.parquet")}
    assert {"sharpness", "landscape", "histogram", "convergence"} <= written
    for name in written:
        data = pq.read_table(tables / f"{name}.parquet")
        assert data.schema.remove_metadata() == OUTPUT_TABLES[name].schema.remove_metadata()
    for table in ("sharpness", "convergence"):
        per_trial = sum(records(smoke, t, table).num_rows for t in smoke.outcome.finished
                        if table in TRIAL_TABLES.get(smoke.trials[t].experiment, ()))
        assert pq.read_table(tables / f"{table}.parquet").num_rows == per_trial
    assert (smoke.plan.layout.sweep_dir / "report.md").is_file()
    assert list((smoke.plan.layout.sweep_dir / "figures").glob("*.png"))


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.parquet"))}


def test_aggregating_again_gives_byte_identical_tables(smoke, capsys):
    before = _digests(smoke.plan.layout.sweep_dir / "tables")
    assert main(["aggregate", str(smoke.plan.layout.sweep_dir)]) == 0
    assert _digests(smoke.plan.layout.sweep_dir / "tables") == before and before


def test_a_rerun_skips_finished_trials_and_refuses_a_changed_config(smoke):
    again = plan_sweep(load_config(smoke.top, smoke.overrides))
    # Only the failed trial (no done mark) would run again.
    assert [t.trial_id for t in again.trials] == [BROKEN] and sorted(again.done) == sorted(smoke.outcome.finished)
    with pytest.raises(ConfigError, match="already holds trial .* with a different config"):
        plan_sweep(load_config(smoke.top, [*smoke.overrides, "experiments.1.steps=7"]))


# --- conf/smoke_workloads.yaml: every workload, and the smoothness experiment ------------------------------


def test_every_workload_and_the_smoothness_trial_finish(smoke):
    assert set(smoke.workload_trials) <= set(smoke.outcome.finished)
    client = MlflowClient(smoke.plan.tracker.uri)
    runs = client.search_runs([client.get_experiment_by_name(smoke.config.name).experiment_id])
    children = [r for r in runs
                if "mlflow.parentRunId" in r.data.tags and r.data.tags["trial_id"] in smoke.workload_trials]
    assert sorted(r.data.tags["workload"] for r in children) == sorted(
        [*WORKLOADS, "classification"])
    assert all(r.info.status == "FINISHED" for r in children)


def test_sharpness_table_has_every_probe_on_every_workload(smoke):
    table = pq.read_table(smoke.plan.layout.sweep_dir / "tables" / "sharpness.parquet").to_pandas()
    table = table[table["trial_id"].isin(list(smoke.workload_trials))]
    assert set(table["workload"]) == WORKLOADS
    labels = {p.label for p in DEFAULT_PROBES}
    for workload, rows in table.groupby("workload"):
        assert set(rows["probe"]) == labels and set(rows["step"]) == {0, 2}, workload
        sgd = rows[rows["probe"] == "sgd"]
        assert (sgd["ratio_to_sgd"] == 1.0).all()


def test_smoothness_and_table8(smoke):
    sweep_dir = smoke.plan.layout.sweep_dir
    rows = pq.read_table(sweep_dir / "tables" / "smoothness.parquet").to_pandas()
    assert list(rows["step"]) == [0, 2] and (rows["workload"] == "classification").all()
    assert ((rows["ell"] > 0) & (rows["ell"] <= rows["L"])).all()
    assert (rows["n_samples"] == 4).all() and (rows["outlier_factor"] == 4.0).all()
    table8 = pq.read_table(sweep_dir / "tables" / "table8_smoothness.parquet").to_pandas()
    assert len(table8) == 2
    assert "Table 8" in (sweep_dir / "report.md").read_text()


# --- the broken trial ------------------------------------------------------------------------------------


def test_a_failed_trial_is_named_and_the_finished_ones_are_aggregated(smoke):
    assert smoke.code == 1
    failed = [line for line in smoke.err.splitlines() if line.startswith("FAILED ")]
    assert len(failed) == 1 and failed[0].startswith(f"FAILED {BROKEN}: ")
    assert "divisible by num_heads" in failed[0] and "Traceback" not in smoke.err
    error_file = smoke.results / "smoke" / "trials" / BROKEN / "error.txt"
    assert failed[0].endswith(f"(traceback: {error_file})") and "ValueError" in error_file.read_text()
    convergence = pq.read_table(smoke.results / "smoke" / "tables" / "convergence.parquet")
    finished = [t for t in smoke.outcome.finished if smoke.trials[t].experiment == "convergence"]
    assert sorted(set(convergence.column("trial_id").to_pylist())) == sorted(finished)
    assert convergence.num_rows == sum(smoke.trials[t].steps for t in finished)
    assert "mlflow ui --backend-store-uri" in smoke.out
    client = MlflowClient(tracking.resolve_tracking_uri(f"sqlite:///{smoke.db}"))
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    statuses = {r.data.tags.get("trial_id", r.info.run_name): r.info.status for r in runs}
    assert statuses == {"smoke": "FAILED", BROKEN: "FAILED", **{t: "FINISHED" for t in smoke.outcome.finished}}
