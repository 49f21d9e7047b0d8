"""The paper's orderings claims, checked from Table 1 / Table 8 rows (pipeline/orderings.py)."""

from __future__ import annotations

import pytest

from pipeline.orderings import paper_orderings, sharpness_orderings, smoothness_orderings


def t1(workload, step, probe, ratio, *, trajectory="sgd", lr=0.1):
    return {"sweep": "s", "workload": workload, "trajectory": trajectory, "lr": lr, "step": step,
            "probe": probe, "ratio_mean": ratio, "seed": 0}


def by_subject(rows, claim):
    return {r["subject"]: r for r in rows if r["claim"] == claim}


def test_adaptive_flatter_holds_on_a_transformer_and_agrees():
    rows = [t1("causal_lm", s, p, r) for s in (50, 100)
            for p, r in (("sgd", 1.0), ("adam", 0.1), ("lion", 0.2), ("adam_clip0.5", 0.05))]
    out = by_subject(sharpness_orderings(rows), "adaptive_flatter_than_sgd")
    assert set(out) == {"adam", "lion"}  # only the adaptive probes present; not sgd, not clipped
    assert out["adam"]["holds"] and out["adam"]["paper"] and out["adam"]["agrees"]
    assert out["adam"]["measured"] == pytest.approx(0.1) and out["adam"]["n_points"] == 2


def test_image_expects_the_reverse():
    rows = [t1("image", s, p, r) for s in (50, 100) for p, r in (("sgd", 1.0), ("adam", 2.5))]
    adam = by_subject(sharpness_orderings(rows), "adaptive_flatter_than_sgd")["adam"]
    assert adam["holds"] is False and adam["paper"] is False and adam["agrees"] is True
    # On a transformer the same numbers disagree with the paper.
    rows = [dict(r, workload="translation") for r in rows]
    assert by_subject(sharpness_orderings(rows), "adaptive_flatter_than_sgd")["adam"]["agrees"] is False


def test_step_zero_left_out_when_later_points_exist():
    rows = [t1("causal_lm", 0, "sgd", 1.0), t1("causal_lm", 0, "adam", 5.0),
            t1("causal_lm", 50, "sgd", 1.0), t1("causal_lm", 50, "adam", 0.5)]
    adam = by_subject(sharpness_orderings(rows), "adaptive_flatter_than_sgd")["adam"]
    assert adam["n_points"] == 1 and adam["fraction_holding"] == 1.0
    only_zero = by_subject(sharpness_orderings(rows[:2]), "adaptive_flatter_than_sgd")["adam"]
    assert only_zero["n_points"] == 1 and only_zero["holds"] is False


def test_clipping_compares_each_clipped_probe_with_its_twin():
    rows = []
    for s, (adam, clip, upd) in {50: (0.2, 0.1, 0.4), 100: (0.2, 0.1, 0.3), 200: (0.2, 0.3, 0.1)}.items():
        rows += [t1("translation", s, "sgd", 1.0), t1("translation", s, "adam", adam),
                 t1("translation", s, "adam_clip0.5", clip), t1("translation", s, "adam_clipupdate0.5", upd),
                 t1("translation", s, "lion_clipupdate0.5", 0.1)]  # no lion probe: no twin, no row
    out = by_subject(sharpness_orderings(rows), "clipping_lowers_sharpness")
    assert set(out) == {"adam_clip0.5 vs adam", "adam_clipupdate0.5 vs adam"}
    grad = out["adam_clip0.5 vs adam"]
    assert grad["fraction_holding"] == pytest.approx(2 / 3) and grad["holds"]
    assert grad["measured"] == pytest.approx(0.5)  # median of 0.5, 0.5, 1.5
    update = out["adam_clipupdate0.5 vs adam"]
    assert update["fraction_holding"] == pytest.approx(1 / 3) and update["holds"] is False


def test_sgd_clip_is_compared_with_sgd_and_zero_sharpness_is_skipped():
    rows = [t1("causal_lm", 50, "sgd", 1.0), t1("causal_lm", 50, "sgd_clip0.1", 0.4),
            t1("causal_lm", 50, "adam", 0.0), t1("causal_lm", 50, "adam_clip0.5", 0.1)]
    out = by_subject(sharpness_orderings(rows), "clipping_lowers_sharpness")
    assert out["sgd_clip0.1 vs sgd"]["measured"] == pytest.approx(0.4)
    assert out["adam_clip0.5 vs adam"]["measured"] is None  # 0.1 / 0: no finite ratio
    assert out["adam_clip0.5 vs adam"]["holds"] is False and out["adam_clip0.5 vs adam"]["n_points"] == 1


def t8(step, ratio, eps, factor=4.0):
    return {"sweep": "s", "workload": "classification", "trajectory": "adam", "lr": 1e-3,
            "outlier_factor": factor, "step": step, "ratio": ratio, "fraction_removed": eps}


def test_smoothness_needs_both_a_ratio_above_one_and_few_removed():
    rows = [t8(0, 0.5, 0.5), t8(10, 3.0, 0.01), t8(20, 1.5, 0.02), t8(30, 4.0, 0.2)]
    row, = smoothness_orderings(rows)
    assert row["n_points"] == 3 and row["fraction_holding"] == pytest.approx(2 / 3)
    assert row["holds"] and row["paper"] and row["measured"] == pytest.approx(3.0)
    assert "20.00%" in row["detail"]  # the largest eps shown
    low, = smoothness_orderings([t8(10, 1.0, 0.01), t8(20, 1.0, 0.0)])
    assert low["holds"] is False and low["agrees"] is False


def test_factors_are_separate_rows():
    rows = [t8(10, 3.0, 0.01, factor=2.0), t8(10, 1.0, 0.0, factor=4.0)]
    assert {r["subject"]: r["holds"] for r in paper_orderings([], rows)} == {"factor 2": True, "factor 4": False}


def test_median_ratios_per_probe_leave_out_step_zero():
    from pipeline.orderings import median_ratios

    rows = [t1("image", 0, "adam", 9.0), t1("image", 50, "adam", 0.2), t1("image", 100, "adam", 0.4),
            t1("image", 200, "adam", 0.3), t1("image", 50, "lion", None)]
    assert median_ratios(rows) == {("s", "image", "sgd", 0.1, "adam"): pytest.approx(0.3)}
