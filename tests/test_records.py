"""Per-trial records: schema enforcement, atomic and deterministic writes, readers."""

from __future__ import annotations

import os
import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import records
from pipeline.config import Trial
from pipeline.layout import ResultsLayout
from pipeline.schemas import IDENTIFYING_COLUMNS, TRIAL_TABLES

TRIAL = Trial.model_validate({
    "sweep": "unit", "trial_id": "convergence-causal_lm-adafactor-c0-lrrel-s3", "experiment": "convergence",
    "workload": {"name": "causal_lm", "size": "tiny"}, "algorithm": "adafactor", "clip_fraction": 0.0,
    "clip_target": "grad", "lr": None, "seed": 3, "steps": 4, "device": "cpu", "hparams": {},
})
# What the records writer takes: the trial's identifying columns (tests tamper with a copy).
IDENTITY = TRIAL.identity()


def conv_rows(n: int = 4) -> list[dict]:
    return [{"step": s, "train_loss": 5.0 - s, "test_loss": (4.5 - s) if s % 2 == 0 else None} for s in range(n)]


def sharp_row(step: int = 0, probe: str = "sgd", **changes) -> dict:
    row = {
        "step": step, "probe": probe, "probe_algorithm": "sgd", "probe_clip_fraction": 0.0,
        "probe_clip_target": "grad", "sharpness": 2.0, "sharpness_raw": 2.0, "robust": False,
        "ratio_to_sgd": 1.0, "grad_correlation": 0.5, "update_norm": 1.25,
        "sharpness_shifted": None, "ratio_to_sgd_paper": 1.0, "clip_tau": None, "grad_zero_fraction": 0.0,
        "measure_batch": "train", "measure_batch_size": 8, "measure_sub_batch_size": 8,
    }
    row.update(changes)
    return row


def test_round_trip_adds_identifying_columns(tmp_path):
    layout = ResultsLayout(tmp_path)
    paths = records.write_trial_records(layout.records_dir("t"), TRIAL.identity(), {"convergence": conv_rows()})
    assert paths == [tmp_path / "trials" / "t" / "records" / "convergence.parquet"]
    df = pd.read_parquet(paths[0])
    assert list(df.columns) == list(IDENTIFYING_COLUMNS) + ["status", "step", "train_loss", "test_loss"]
    assert (df["workload"] == "causal_lm").all() and (df["seed"] == 3).all()
    assert (df["status"] == "finished").all()  # the default: a trial that ran to its last step
    assert df["lr"].isna().all()  # Adafactor's relative step stays null, not 0
    assert df["train_loss"].tolist() == [5.0, 4.0, 3.0, 2.0]
    assert df["test_loss"].isna().tolist() == [False, True, False, True]
    schema = pq.read_schema(paths[0])
    assert schema.field("step").type == pa.int64() and not schema.field("step").nullable
    assert schema.field("lr").nullable and schema.field("test_loss").nullable
    assert b"pandas" not in (schema.metadata or {})


def test_experiment_rows_in_any_order_give_identical_bytes(tmp_path):
    rows = [sharp_row(step, probe, sharpness=float(step + i)) for step in (0, 10) for i, probe in enumerate("abc")]
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    trial = {**IDENTITY, "experiment": "sharpness"}
    a = records.write_trial_records(tmp_path / "a" / "records", trial, {"sharpness": rows})[0].read_bytes()
    b = records.write_trial_records(tmp_path / "b" / "records", trial, {"sharpness": shuffled})[0].read_bytes()
    again = records.write_trial_records(tmp_path / "a" / "records", trial, {"sharpness": rows})[0].read_bytes()
    assert a == b == again
    steps = pq.read_table(tmp_path / "b" / "records" / "sharpness.parquet").column("step").to_pylist()
    assert steps == sorted(steps)


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ({k: v for k, v in sharp_row().items() if k != "robust"}, "'robust'"),  # missing column
        ({**sharp_row(), "loss": 1.0}, "'loss'"),  # unexpected column
        ({**sharp_row(), "seed": 1}, "'seed'"),  # identifying columns come from the trial, not the row
        (sharp_row(sharpness="2.0"), "'sharpness'"),  # str in a float column
        (sharp_row(step=2.5), "'step'"),  # pyarrow would silently truncate this to 2
        (sharp_row(update_norm=True), "'update_norm'"),  # bool in a float column
        (sharp_row(robust=1), "'robust'"),  # int in a bool column
        (sharp_row(probe=None), "'probe'"),  # null in a required column
    ],
)
def test_schema_violations_name_table_and_column(tmp_path, row, needle):
    with pytest.raises(ValueError, match="sharpness") as err:
        records.write_trial_records(tmp_path / "records", IDENTITY, {"sharpness": [sharp_row(10), row]})
    assert needle in str(err.value)
    assert not (tmp_path / "records").exists()


def test_bad_table_leaves_no_file_for_the_good_ones(tmp_path):
    with pytest.raises(ValueError, match="'convergence'.*'train_loss'"):
        records.write_trial_records(tmp_path / "records", IDENTITY,
                                    {"sharpness": [sharp_row()], "convergence": [{"step": 0}]})
    assert not (tmp_path / "records").exists()


def test_unknown_table_and_incomplete_trial_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown table 'sharpnes'"):
        records.write_trial_records(tmp_path, IDENTITY, {"sharpnes": []})
    with pytest.raises(ValueError, match=r"trial: missing key\(s\) \['seed'\]"):
        records.write_trial_records(tmp_path, {k: v for k, v in IDENTITY.items() if k != "seed"}, {})
    with pytest.raises(ValueError, match="trial: column 'clip_fraction'"):
        records.write_trial_records(tmp_path, {**IDENTITY, "clip_fraction": "0.1"}, {})


def test_numpy_scalars_are_accepted(tmp_path):
    row = {"step": np.int64(2), "train_loss": np.float32(0.5), "test_loss": np.float64(0.25)}
    path = records.write_trial_records(tmp_path, {**IDENTITY, "seed": np.int64(1)}, {"convergence": [row]})[0]
    assert pq.read_table(path).to_pylist()[0]["train_loss"] == 0.5


def test_empty_table_is_written_with_its_schema(tmp_path):
    path = records.write_trial_records(tmp_path, IDENTITY, {"histogram": []})[0]
    table = pq.read_table(path)
    assert table.num_rows == 0 and table.schema.names == TRIAL_TABLES["histogram"].schema.names


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch, failing):
    records_dir = tmp_path / "trial" / "records"
    path = records.write_trial_records(records_dir, IDENTITY, {"convergence": conv_rows(2)})[0]
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="disk full"):
        records.write_trial_records(records_dir, IDENTITY, {"convergence": conv_rows(4)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["convergence.parquet"]


def _write_trials(layout, order):
    for seed in order:
        trial = TRIAL.model_copy(update={"trial_id": f"t{seed}", "seed": seed, "lr": 0.1 * (seed + 1)})
        records.write_trial_records(layout.records_dir(trial.trial_id), trial.identity(), {"convergence": conv_rows(3)})


def test_read_trial_records_is_sorted_and_independent_of_write_order(tmp_path):
    _write_trials(ResultsLayout(tmp_path / "x"), [2, 0, 1])
    _write_trials(ResultsLayout(tmp_path / "y"), [1, 2, 0])
    x = records.read_trial_records(ResultsLayout(tmp_path / "x"))
    y = records.read_trial_records(ResultsLayout(tmp_path / "y"))
    assert list(x) == ["convergence"] and x["convergence"].equals(y["convergence"])
    assert x["convergence"].num_rows == 9
    assert x["convergence"].column("trial_id").to_pylist() == ["t0"] * 3 + ["t1"] * 3 + ["t2"] * 3
    assert records.read_trial_records(ResultsLayout(tmp_path / "missing")) == {}


def test_read_rejects_a_file_with_a_foreign_schema(tmp_path):
    bad = tmp_path / "trials" / "t" / "records" / "convergence.parquet"
    bad.parent.mkdir(parents=True)
    pq.write_table(pa.table({"step": [1]}), bad)
    with pytest.raises(ValueError, match="convergence.parquet"):
        records.read_trial_records(ResultsLayout(tmp_path))


def test_duckdb_reads_records(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    path = records.write_trial_records(tmp_path, {**IDENTITY, "lr": 0.5}, {"convergence": conv_rows()})[0]
    assert duckdb.sql(f"select sum(train_loss), count(test_loss) from '{path}'").fetchall() == [(14.0, 2)]


def test_polars_reads_records(tmp_path):
    pl = pytest.importorskip("polars")
    path = records.write_trial_records(tmp_path, {**IDENTITY, "lr": 0.5}, {"convergence": conv_rows()})[0]
    assert pl.read_parquet(path)["lr"].to_list() == [0.5] * 4


def test_records_written_before_label_and_hparams_existed_still_read(tmp_path):
    """An older sweep's records lack label/hparams (and trials its run_id): label and run id null, the
    hparams from the trial's done mark."""
    import json

    layout = ResultsLayout(tmp_path)
    records.write_trial_records(layout.records_dir(TRIAL.trial_id), IDENTITY, {"convergence": conv_rows(2)})
    path = layout.records_dir(TRIAL.trial_id) / "convergence.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["label", "hparams"]), path)
    layout.done_mark(TRIAL.trial_id).write_text(json.dumps({**TRIAL.to_json(), "hparams": {"beta2": 0.99}}))
    data = records.read_trial_records(layout)["convergence"]
    assert data.schema.names == TRIAL_TABLES["convergence"].schema.names
    assert set(data.column("label").to_pylist()) == {None}
    assert set(data.column("hparams").to_pylist()) == {'{"beta2":0.99}'}
