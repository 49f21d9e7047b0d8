"""The paper's claims, checked from Table 1 / Table 8 rows against the published values (pipeline/orderings.py)."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.labels import parse_label
from pipeline.orderings import (
    CONTROL_MARGIN,
    PAPER_MIN_RATIO,
    paper_orderings,
    sharpness_orderings,
    smoothness_orderings,
)
from pipeline.paper_values import load_paper_values

PUBLISHED = load_paper_values()


def setting(trajectory):
    """The identity columns of a trajectory label, as Table 1 / Table 8 rows carry them."""
    algorithm, fraction, target = parse_label(trajectory)
    return {"sweep": "s", "label": None, "algorithm": algorithm, "clip_fraction": fraction, "clip_target": target,
            "hparams": "{}", "trajectory": trajectory}


def t1(workload, step, probe, ratio, *, trajectory="sgd", lr=0.1, n_undecided=0):
    return {**setting(trajectory), "workload": workload, "lr": lr, "step": step,
            "probe": probe, "ratio_mean": ratio, "seed": 0, "n_undecided": n_undecided}


def by_subject(rows, claim):
    return {r["subject"]: r for r in rows if r["claim"] == claim}


def flipped(table, row, column, factor):
    """The published values with one table row's values in `column` multiplied by `factor`."""
    return [dataclasses.replace(v, value=v.value * factor)
            if (v.table, v.row, v.column) == (table, row, column) else v for v in PUBLISHED]


def test_adaptive_flatter_on_the_translation_transformer_as_table_4():
    rows = [t1("translation", s, p, r) for s in (50, 100)
            for p, r in (("sgd", 1.0), ("adam", 0.1), ("lion", 0.2), ("adam_clip0.5", 0.05))]
    out = by_subject(sharpness_orderings(rows, PUBLISHED), "adaptive_flatter_than_sgd")
    assert set(out) == {"adam", "lion"}  # only the adaptive probes present; not sgd, not clipped
    adam = out["adam"]
    assert adam["holds"] and adam["paper"] and adam["verdict"] == "held"
    assert adam["paper_source"] == "Table 4 (mean)" and adam["paper_points"] == 4
    assert adam["paper_value"] == pytest.approx((0.00741 + 0.01121) / 2)  # median of the 4 epochs' means
    assert adam["measured"] == pytest.approx(0.1) and adam["measured_log10"] == pytest.approx(-1.0)
    assert adam["n_points"] == 2 and adam["n_undecided"] == 0


def test_flipping_a_published_value_flips_the_expectation():
    rows = [t1("translation", s, p, r) for s in (50, 100) for p, r in (("sgd", 1.0), ("adam", 0.1))]
    assert by_subject(sharpness_orderings(rows, PUBLISHED), "adaptive_flatter_than_sgd")["adam"]["paper"] is True
    # Adam's Table 4 means made 1000x larger: above SGD's at every epoch, so the paper expects the reverse.
    turned = by_subject(sharpness_orderings(rows, flipped(4, "adam", "mean", 1000.0)), "adaptive_flatter_than_sgd")
    assert turned["adam"]["paper"] is False and turned["adam"]["verdict"] == "did not hold"


def test_lion_clipped_is_sharper_than_lion_in_table_4_and_adam_clipupdate_along_adam_in_table_6():
    rows = []
    for s in (50, 100):
        rows += [t1("translation", s, p, r) for p, r in (("sgd", 1.0), ("lion", 0.2), ("lion_clipupdate0.5", 0.1))]
        rows += [t1("translation", s, p, r, trajectory="adam", lr=1e-3)
                 for p, r in (("sgd", 1.0), ("adam", 0.2), ("adam_clipupdate0.5", 0.1), ("adam_clip0.5", 0.01))]
    out = {(r["trajectory"], r["subject"]): r for r in sharpness_orderings(rows, PUBLISHED)
           if r["claim"] == "clipping_lowers_sharpness"}
    lion = out[("sgd", "lion_clipupdate0.5 vs lion")]
    assert lion["paper"] is False and lion["paper_value"] == pytest.approx(1.8, rel=0.03)
    assert lion["holds"] is True and lion["verdict"] == "did not hold"  # ours lower, the paper's higher
    update = out[("adam", "adam_clipupdate0.5 vs adam")]
    assert update["paper_fraction_holding"] == pytest.approx(1 / 4) and update["paper"] is False
    assert out[("adam", "adam_clip0.5 vs adam")]["paper"] is True


def test_resnet_table_9_per_probe_and_only_the_sgd_trajectory():
    probes = (("sgd", 1.0), ("adam", 2.0), ("adafactor", 3.0), ("lion", 0.5), ("sign_sgd", 0.5),
              ("adam_clip0.5", 1.0))
    rows = [t1("image", s, p, r, trajectory=traj) for traj in ("sgd", "adam") for s in (50, 100) for p, r in probes]
    out = {(r["trajectory"], r["claim"], r["subject"]): r for r in sharpness_orderings(rows, PUBLISHED)}
    expected = {"adam": False, "adafactor": False, "lion": True, "sign_sgd": True}
    for probe, paper in expected.items():
        row = out[("sgd", "adaptive_flatter_than_sgd", probe)]
        assert row["paper"] is paper and row["paper_source"] == "Table 9 (ratio)", probe
    assert out[("sgd", "adaptive_flatter_than_sgd", "lion")]["paper_fraction_holding"] == pytest.approx(2 / 3)
    clip = out[("sgd", "clipping_lowers_sharpness", "adam_clip0.5 vs adam")]
    assert clip["paper"] is True and "adam_clip0.1" in clip["detail"]  # the ResNet's own clip fraction
    for row in (r for k, r in out.items() if k[0] == "adam"):  # App. E: SGD's trajectory only
        assert row["paper"] is None and row["verdict"] == "the paper has no value" and row["paper_source"] is None


def test_negative_ratios_are_undecided_never_held():
    rows = [t1("translation", 50, "sgd", 1.0), t1("translation", 50, "adam", -0.3),
            t1("translation", 100, "sgd", 1.0), t1("translation", 100, "adam", 0.2, n_undecided=1)]
    adam = by_subject(sharpness_orderings(rows, PUBLISHED), "adaptive_flatter_than_sgd")["adam"]
    assert adam["n_points"] == 2 and adam["n_undecided"] == 2
    assert adam["holds"] is None and adam["verdict"] == "undecided" and adam["measured"] is None
    # The paper's own negative values (Table 7, Adam along Adam on code) are undecided points too.
    rows = [t1("causal_lm", 50, p, r, trajectory="adam") for p, r in (("sgd", 1.0), ("adam", 0.1))]
    adam = by_subject(sharpness_orderings(rows, PUBLISHED), "adaptive_flatter_than_sgd")["adam"]
    assert adam["paper_points"] == 4 and adam["paper"] is True and adam["paper_value"] == pytest.approx(0.000166)


def test_a_published_series_with_no_decided_point_gives_no_value():
    # Table 7 (code, Adam's trajectory): adam_clip0.5 and adam are never both positive at one epoch.
    rows = [t1("causal_lm", 50, p, r, trajectory="adam") for p, r in (("sgd", 1.0), ("adam", 0.1),
                                                                      ("adam_clip0.5", 0.01))]
    row = by_subject(sharpness_orderings(rows, PUBLISHED), "clipping_lowers_sharpness")["adam_clip0.5 vs adam"]
    assert row["paper_points"] == 4 and row["paper"] is None and row["verdict"] == "the paper has no value"
    assert "every published point here is undecided" in row["detail"]


def test_step_zero_left_out_when_later_points_exist():
    rows = [t1("causal_lm", 0, "sgd", 1.0), t1("causal_lm", 0, "adam", 5.0),
            t1("causal_lm", 50, "sgd", 1.0), t1("causal_lm", 50, "adam", 0.5)]
    adam = by_subject(sharpness_orderings(rows, PUBLISHED), "adaptive_flatter_than_sgd")["adam"]
    assert adam["n_points"] == 1 and adam["fraction_holding"] == 1.0
    only_zero = by_subject(sharpness_orderings(rows[:2], PUBLISHED), "adaptive_flatter_than_sgd")["adam"]
    assert only_zero["n_points"] == 1 and only_zero["holds"] is False


def test_a_config_probe_without_a_published_row_has_no_paper_value():
    rows = [t1("translation", 50, p, r) for p, r in (("sgd", 1.0), ("sgd_clip0.3", 0.5))]
    row = by_subject(sharpness_orderings(rows, PUBLISHED), "clipping_lowers_sharpness")["sgd_clip0.3 vs sgd"]
    assert row["paper"] is True and "sgd_clip0.1" in row["detail"]  # same algorithm, the paper's fraction
    rows = [t1("translation", 50, p, r, trajectory="sgd_clip0.1") for p, r in (("sgd", 1.0), ("adam", 0.5))]
    row = by_subject(sharpness_orderings(rows, PUBLISHED), "adaptive_flatter_than_sgd")["adam"]
    assert row["verdict"] == "the paper has no value"


def t8(step, ratio, eps, ell_random_over_ell, factor=4.0, workload="classification"):
    ell = 10.0
    return {**setting("adam"), "workload": workload, "lr": 1e-3, "outlier_factor": factor,
            "gn_params": "attention", "control_seed": 0, "step": step, "ratio": ratio, "fraction_removed": eps,
            "L": ratio * ell, "ell": ell, "ell_random": ell * ell_random_over_ell,
            "ratio_random": ratio / ell_random_over_ell}


def test_smoothness_needs_the_papers_order_few_removed_and_to_beat_the_random_control():
    rows = [t8(0, 0.9, 0.5, 1.0), t8(10, 3.0, 0.01, 2.8), t8(20, 2.5, 0.02, 2.4),
            t8(30, 4.0, 0.2, 3.5),   # too many removed
            t8(40, 1.3, 0.01, 1.2),  # L/ell > 1 (always true) but not the paper's order
            t8(50, 3.0, 0.01, 1.1)]  # random removal does almost as well: no outliers
    row, = smoothness_orderings(rows, PUBLISHED)
    assert row["n_points"] == 5 and row["fraction_holding"] == pytest.approx(2 / 5) and row["holds"] is False
    assert row["paper"] is True and row["paper_points"] == 6 and row["paper_source"] == "Table 8"
    assert row["paper_value"] == pytest.approx(2.355) and row["verdict"] == "did not hold"
    assert row["measured"] == pytest.approx(3.0) and row["control"] is not None
    assert f">= {PAPER_MIN_RATIO:g}" in row["detail"] and f">= {CONTROL_MARGIN:g}" in row["detail"]
    assert "seed 0" in row["detail"] and row["subject"] == "factor 4, attention"
    held, = smoothness_orderings(rows[1:3], PUBLISHED)
    assert held["verdict"] == "held"


def test_paper_orderings_concatenates_both():
    t1_rows = [t1("causal_lm", 50, "sgd", 1.0), t1("causal_lm", 50, "adam", 0.1)]
    claims = {r["claim"] for r in paper_orderings(t1_rows, [t8(10, 3.0, 0.01, 3.0)], PUBLISHED)}
    assert claims == {"adaptive_flatter_than_sgd", "few_coordinates_carry_bad_smoothness"}
