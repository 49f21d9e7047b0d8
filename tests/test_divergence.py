"""A forced divergence end to end without Ray: real trials through the runner and the results sink into a
real MLflow store, then `python -m pipeline aggregate`: `diverged` in the records, the trials table, the
run's tag, the convergence summary (no step-0 final loss) and the orderings (left out, and said so)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from pipeline.__main__ import main
from pipeline.config import validate
from pipeline.runner import plan_sweep, run_trial
from pipeline.sink import ResultsSink

TINY_LM = {"name": "causal_lm", "size": "tiny", "batch_size": 4, "seq_len": 32}
PROBES = [{"label": "sgd", "algorithm": "sgd"}, {"label": "adam", "algorithm": "adam"}]
# SGD at lr 1000 on the tiny LM: loss ~6 at step 0, > 1000 at step 1 (10x the default factor).
HUGE = 1000.0

pytestmark = pytest.mark.slow  # four real trials and a real MLflow store: about a minute on 2 busy cores


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diverge")
    config = validate({
        "name": "diverge", "device": "cpu", "results_dir": str(tmp / "results"),
        "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "experiments": [
            {"experiment": "convergence", "workload": TINY_LM, "steps": 4, "eval_every": 2,
             "algorithms": {"sgd": {"lr": [0.1, HUGE]}}},
            {"experiment": "sharpness", "workload": TINY_LM, "steps": 2,
             "measure": {"at": [0, 1, 2], "probes": PROBES, "landscape_offsets": [0.0, 0.1], "histogram_bins": 4},
             "algorithms": {"sgd": {"lr": [0.1, HUGE]}}},
        ],
    })
    plan = plan_sweep(config)
    layout = plan.layout
    layout.write_plan([t.trial_id for t in config.trials], {t.trial_id: t.experiment for t in config.trials})
    sweep_run = plan.tracker.start_sweep(config.name, tags={})
    sink = ResultsSink(layout, sweep_run)
    summaries = {t.trial_id: run_trial(t, sink) for t in config.trials}
    sweep_run.end("FINISHED")
    code = main(["aggregate", str(layout.sweep_dir)])
    ids = {(t.experiment, t.lr): t.trial_id for t in config.trials}
    return SimpleNamespace(config=config, plan=plan, layout=layout, summaries=summaries, code=code, ids=ids)


def table(swept, name):
    return pq.read_table(swept.layout.table_path(name)).to_pylist()


def test_the_diverged_trials_records_and_trials_table_say_so(swept):
    for experiment in ("convergence", "sharpness"):
        bad, good = swept.ids[(experiment, HUGE)], swept.ids[(experiment, 0.1)]
        assert swept.summaries[bad]["diverged"] == 1 and swept.summaries[good]["diverged"] == 0
        (row,) = pq.read_table(swept.layout.records_dir(bad) / "trials.parquet").to_pylist()
        assert (row["status"], row["diverged_step"]) == ("diverged", 1) and row["diverged_loss"] > 100
        assert swept.layout.done_mark(bad).is_file()  # a diverged trial completed: not a failure
        for path in swept.layout.records_dir(bad).glob("*.parquet"):
            assert set(pq.read_table(path).column("status").to_pylist()) == {"diverged"}, path
    trials = {r["trial_id"]: r for r in table(swept, "trials")}
    assert {t: r["status"] for t, r in trials.items()} == {
        i: "diverged" if lr == HUGE else "finished" for (_, lr), i in swept.ids.items()}


def test_no_sharpness_point_at_or_after_the_divergence(swept):
    bad = swept.ids[("sharpness", HUGE)]
    for name in ("sharpness", "landscape", "histogram"):
        assert {r["step"] for r in table(swept, name) if r["trial_id"] == bad} == {0}, name


def test_the_mlflow_run_is_tagged_diverged(swept):
    client = MlflowClient(swept.plan.tracker.uri)
    experiment = client.get_experiment_by_name("diverge")
    runs = {r.data.tags["trial_id"]: r for r in client.search_runs([experiment.experiment_id], "tags.trial_id != ''")}
    for (_, lr), trial_id in swept.ids.items():
        run = runs[trial_id]
        assert run.info.status == "FINISHED"  # it ran to its end; what happened is the tag
        assert run.data.tags["status"] == ("diverged" if lr == HUGE else "finished")
    bad = runs[swept.ids[("convergence", HUGE)]]
    assert [m.step for m in client.get_metric_history(bad.info.run_id, "diverged")] == [1]


def test_the_convergence_summary_never_reports_a_step_0_loss_as_final(swept):
    rows = [r for r in table(swept, "convergence") if r["trial_id"] == swept.ids[("convergence", HUGE)]]
    assert [r["step"] for r in rows] == [0, 1] and rows[1]["test_loss"] is None
    (summary,) = table(swept, "convergence_summary")
    # The finished lr wins; its final loss is over steps 1..3 only, its test loss the last one (step 3).
    good = [r for r in table(swept, "convergence") if r["trial_id"] == swept.ids[("convergence", 0.1)]]
    assert (summary["best_lr"], summary["status"], summary["n_diverged"], summary["n_lrs"]) == (0.1, "finished", 0, 2)
    assert summary["final_loss_mean"] == pytest.approx(sum(r["train_loss"] for r in good[1:]) / 3, rel=1e-12)
    assert summary["final_test_loss_mean"] == good[-1]["test_loss"] and good[-1]["step"] == 3
    # Alone, the diverged lr has no final loss at all (not its step-0 value) and says so.
    from pipeline.tables import convergence_summary

    (alone,) = convergence_summary(rows)
    assert (alone["status"], alone["n_diverged"], alone["final_loss_mean"], alone["final_test_loss_mean"]) == (
        "diverged", 1, None, None)


def test_the_orderings_leave_the_diverged_trial_out_and_say_so(swept):
    bad = swept.ids[("sharpness", HUGE)]
    rows = table(swept, "orderings")
    at_huge = [r for r in rows if r["lr"] == HUGE]
    assert [(r["claim"], r["holds"], r["agrees"]) for r in at_huge] == [("trajectory_diverged", None, None)]
    assert bad in at_huge[0]["detail"]
    assert all(r["measured"] is None or math.isfinite(r["measured"]) for r in rows)
    assert {r["lr"] for r in rows if r["claim"] != "trajectory_diverged"} == {0.1}


def test_aggregate_and_the_report_count_the_diverged_trials(swept, capsys):
    assert swept.code == 0
    assert main(["aggregate", str(swept.layout.sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "trials: 4 planned: 2 finished, 2 diverged, 0 failed, 0 missing" in out
    assert "  convergence_summary: 2 planned: 1 finished, 1 diverged, 0 failed, 0 missing" in out
    text = swept.layout.report_path.read_text()
    assert "Trials 4 planned: 2 finished, 2 diverged, 0 failed, 0 missing" in text
    assert f"| {swept.ids[('sharpness', HUGE)]} | 1 |" in text  # the diverged trials, with their step
    assert f"Left out of these checks: 1 diverged trial(s) ({swept.ids[('sharpness', HUGE)]})" in text
