"""The published values file: it loads, and covers every table it claims in the paper's shapes."""

from __future__ import annotations

from collections import Counter

import pytest

from pipeline.paper_values import (
    PAPER_VALUES_PATH,
    SHARPNESS_TABLES,
    TABLES,
    load_paper_values,
    sharpness_ratios,
    smoothness_rows,
)

VALUES = load_paper_values()
PROBES_12 = {"sgd", "sgd_clip0.1", "adam", "adam_clip0.5", "adam_clipupdate0.5", "adafactor", "adafactor_clip0.5",
             "lion", "lion_clipupdate0.5", "sign_sgd", "normalized_sgd", "normalized_sgd_clip0.1"}
PROBES_6 = {"sgd", "adam", "adam_clip0.5", "adafactor", "adafactor_clip0.5", "lion"}


def cells(table):
    return [v for v in VALUES if v.table == table]


def test_every_claimed_table_is_there_in_the_papers_shape():
    counts = Counter(v.table for v in VALUES)
    assert set(counts) == set(TABLES)
    # Table 1: 9 algorithms x (sharpness, ratio); Table 3: 10 translation + 6 autoregressive lrs.
    assert counts[1] == 9 * 2 and counts[3] == 10 + 6
    # Table 4: 4 epochs x 12 probes x (3 experiments + mean); Table 6: 11 probes at epochs 2/5/10 and
    # 12 at epoch 20 (normalized SGD clipped appears there only); Tables 5/7: 4 epochs x 6 probes.
    assert counts[4] == 4 * 12 * 4 and counts[6] == (3 * 11 + 12) * 4
    assert counts[5] == counts[7] == 4 * 6
    # Table 8: 6 epochs x (L, ell, L/ell, eps); Table 9: 3 epochs x 10 algorithms.
    assert counts[8] == 6 * 4 and counts[9] == 3 * 10
    for table, probes, epochs in ((4, PROBES_12, {2, 5, 10, 20}), (5, PROBES_6, {2, 5, 10, 20}),
                                  (7, PROBES_6, {2, 5, 10, 20}), (9, None, {2, 5, 10})):
        rows = cells(table)
        assert {v.epoch for v in rows} == epochs, table
        if probes:
            assert {v.row for v in rows} == probes, table
    assert {v.epoch for v in cells(8)} == {0, 1, 2, 7, 8, 9}
    assert {v.row for v in cells(6)} == PROBES_12


def test_values_are_the_printed_ones():
    def one(table, row, column, epoch):
        found = [v.value for v in VALUES if (v.table, v.row, v.column, v.epoch) == (table, row, column, epoch)]
        assert len(found) == 1
        return found[0]

    assert one(1, "sgd", "sharpness", 2) == 8.674583
    assert one(1, "adafactor_clip0.5", "ratio", 2) == pytest.approx(2.364e-8)
    assert one(4, "sgd_clip0.1", "ratio_3", 5) == -0.00493  # signs kept
    assert one(9, "adafactor", "ratio", 2) == 18.85215
    assert one(8, "smoothness", "ratio", 1) == 3.21
    relative = [v for v in cells(3) if v.workload == "translation" and v.row == "adafactor"]
    assert len(relative) == 1 and relative[0].value is None  # Adafactor's relative step


def test_lookups_by_workload_and_trajectory():
    for (workload, trajectory), (table, column) in SHARPNESS_TABLES.items():
        source, series = sharpness_ratios(VALUES, workload, trajectory)
        assert source == f"Table {table} ({column})" and series["sgd"] == dict.fromkeys(series["sgd"], 1.0)
    assert sharpness_ratios(VALUES, "image", "adam") == (None, {})
    assert smoothness_rows(VALUES, "classification", "adam")[1][9]["ell"] == 3471.4
    assert smoothness_rows(VALUES, "classification", "sgd") == (None, {})


def test_a_bad_file_names_its_line(tmp_path):
    bad = tmp_path / "values.csv"
    bad.write_text(PAPER_VALUES_PATH.read_text().splitlines()[0] + "\n4,translation,sgd,sgd,sgd,mean,2,abc\n")
    with pytest.raises(ValueError, match=r"values.csv:2"):
        load_paper_values(bad)
