"""Honest accounting: planned / finished / diverged / failed / missing trials, per table, in `aggregate` and the
report; tables from trials with a done mark only; a note where compared settings have different seeds."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from pipeline.__main__ import main
from pipeline.accounting import seed_counts_note, table3_notes, trial_states
from pipeline.config import Trial
from pipeline.layout import ResultsLayout
from pipeline.records import write_trial_records


def trial(name: str, experiment: str = "convergence", clip: float = 0.0, seed: int = 0) -> Trial:
    return Trial.model_validate({
        "sweep": "acc", "trial_id": name, "experiment": experiment, "workload": {"name": "causal_lm"},
        "algorithm": "sgd", "clip_fraction": clip, "lr": 0.1, "seed": seed, "steps": 10,
    })


def curve(offset: float) -> list[dict]:
    return [{"step": s, "train_loss": 10.0 - s + offset, "test_loss": None} for s in range(10)]


def trials_row() -> list[dict]:
    return [{"node_ip": "n", "hostname": "h", "seconds": 1.0, "diverged_step": None, "diverged_loss": None,
             "run_id": None}]


def make_sweep(root) -> tuple[ResultsLayout, dict[str, Trial]]:
    """Unclipped seeds 0 and 1 and clipped seed 0 finished; clipped seed 1 failed after writing part of
    its records (no done mark); a sharpness trial never ran (only in the plan)."""
    layout = ResultsLayout(root / "acc")
    trials = {t.trial_id: t for t in (trial("plain-s0"), trial("plain-s1", seed=1), trial("clip-s0", clip=0.1),
                                      trial("clip-s1", clip=0.1, seed=1), trial("sharp-s0", "sharpness"))}
    layout.write_plan(list(trials), {t.trial_id: t.experiment for t in trials.values()})
    for name, offset in (("plain-s0", 0.0), ("plain-s1", 1.0), ("clip-s0", -2.0)):
        t = trials[name]
        write_trial_records(layout.records_dir(name), t.identity(), {"convergence": curve(offset),
                                                                     "trials": trials_row()})
        layout.done_mark(name).write_text(json.dumps(t.to_json()))
    # The failed trial: partial records that would change every mean, an error file, no done mark.
    write_trial_records(layout.records_dir("clip-s1"), trials["clip-s1"].identity(), {"convergence": curve(-100.0)})
    layout.error_file("clip-s1").write_text("Traceback ...\nRuntimeError: boom\n")
    return layout, trials


def test_states_from_the_layout(tmp_path):
    layout, _ = make_sweep(tmp_path)
    states = trial_states(layout)
    assert states.state == {"plain-s0": "finished", "plain-s1": "finished", "clip-s0": "finished",
                            "clip-s1": "failed", "sharp-s0": "missing"}
    assert states.done == ["clip-s0", "plain-s0", "plain-s1"]
    assert states.counts() == {"planned": 5, "finished": 3, "diverged": 0, "failed": 1, "missing": 1}
    assert states.per_table(["table3_convergence", "table1_sharpness_ratio"]) == {
        "table3_convergence": {"planned": 4, "finished": 3, "diverged": 0, "failed": 1, "missing": 0},
        "table1_sharpness_ratio": {"planned": 1, "finished": 0, "diverged": 0, "failed": 0, "missing": 1},
    }


def test_tables_come_from_finished_trials_only_and_aggregate_says_what_is_left_out(tmp_path, capsys):
    layout, _ = make_sweep(tmp_path)
    assert main(["aggregate", str(layout.sweep_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    convergence = pq.read_table(layout.table_path("convergence")).to_pylist()
    assert {r["trial_id"] for r in convergence} == {"plain-s0", "plain-s1", "clip-s0"}
    (clipped,) = [r for r in pq.read_table(layout.table_path("convergence_summary")).to_pylist()
                  if r["clip_fraction"] == 0.1]
    assert clipped["n_seeds"] == 1 and clipped["final_loss_mean"] == sum(10.0 - s - 2.0 for s in range(5, 10)) / 5
    assert "records: 3 of 5 planned trials; missing: clip-s1, sharp-s0" in out
    assert "trials: 5 planned: 3 finished, 0 diverged, 1 failed, 1 missing; tables are built from the finished " \
           "and diverged trials' records only" in out
    assert "  convergence: 4 planned: 3 finished, 0 diverged, 1 failed, 0 missing" in out
    assert "  table3_convergence: 4 planned: 3 finished, 0 diverged, 1 failed, 0 missing" in out
    assert "  sharpness: 1 planned: 0 finished, 0 diverged, 0 failed, 1 missing (not built: no records)" in out
    assert "failed: clip-s1" in out and "missing: sharp-s0" in out


def test_the_report_states_the_counts_per_table_and_the_seed_mismatch(tmp_path):
    layout, _ = make_sweep(tmp_path)
    assert main(["aggregate", str(layout.sweep_dir)]) == 0
    text = layout.report_path.read_text()
    assert "Trials 5 planned: 3 finished, 0 diverged, 1 failed, 1 missing" in text
    assert "| `convergence_summary` | 4 | 3 | 0 | 1 | 0 |" in text
    assert "| `trials` | 5 | 3 | 0 | 1 | 1 |" in text
    assert "| `sharpness` (not built: no records) | 1 | 0 | 0 | 0 | 1 | - |" in text
    assert "Failed: clip-s1." in text and "Missing: sharp-s0." in text
    # Right under the comparison it concerns: the Table 3 row of sgd vs sgd_clip0.1.
    table3 = text.index("| sgd | 0.1 (edge) |")
    note = "Note: seeds differ: sgd unclipped 2 seeds vs clipped (0.1, grad) 1 seed."
    assert text.index(note) > table3 and text.count(note) == 1


def test_seed_notes():
    row = {"algorithm": "adam", "clip_fraction": 0.5, "clip_target": "update", "n_seeds": 3, "n_diverged": 0,
           "clip_n_seeds": 3, "clip_n_diverged": 0}
    assert table3_notes([row]) == []
    assert table3_notes([row | {"clip_n_seeds": 2}]) == [
        "seeds differ: adam unclipped 3 seeds vs clipped (0.5, update) 2 seeds"]
    assert table3_notes([row | {"n_diverged": 1}]) == [
        "diverged seeds: adam unclipped 3 seeds (1 diverged) vs clipped (0.5, update) 3 seeds"]
    assert table3_notes([row | {"clip_fraction": None}]) == []  # no clipped side: no comparison
    assert seed_counts_note({"a": 2, "b": 2}) is None
    assert seed_counts_note({"a": 2, "b": 1}) == "seeds differ between the compared columns: a 2, b 1"
