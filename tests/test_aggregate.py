"""The aggregate stage: tables from synthetic trial records with hand-computable values."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from pipeline import aggregate
from pipeline.__main__ import main
from pipeline.config import Trial
from pipeline.layout import ResultsLayout
from pipeline.records import write_trial_records

SWEEP = "syn"


def trial(experiment, algorithm, clip, lr, seed, target="grad", workload="causal_lm"):
    lr_tag = "rel" if lr is None else f"{lr:g}"
    return Trial.model_validate({
        "sweep": SWEEP, "trial_id": f"{experiment}-{workload}-{algorithm}-{target}{clip:g}-lr{lr_tag}-s{seed}",
        "experiment": experiment, "workload": {"name": workload}, "algorithm": algorithm, "clip_fraction": clip,
        "clip_target": target, "lr": lr, "seed": seed, "steps": 100,
    })


def write(sweep_dir, t, records, status="finished"):
    """A trial's records where the sweep's layout puts them, then its done mark (as the sink does)."""
    layout = ResultsLayout(sweep_dir)
    write_trial_records(layout.records_dir(t.trial_id), t.identity(), records, status=status)
    layout.done_mark(t.trial_id).write_text(json.dumps(t.to_json()))


# Convergence curves, logged every 10 steps (10 points). The final loss is the mean of the last 5.
CURVES = {
    # (algorithm, clip, lr): {seed: losses}
    ("sgd", 0.0, 0.1): {0: [10 - i for i in range(10)], 1: [11 - i for i in range(10)]},  # finals 3, 4
    ("sgd", 0.0, 1.0): {0: [10.0] * 5 + [5.0] * 5, 1: [10.0] * 5 + [6.0] * 5},  # finals 5, 6
    ("sgd", 0.1, 0.1): {0: [10, 8, 6, 4, 2, 2, 2, 2, 2, 2], 1: [10, 8, 6, 4, 2, 1, 1, 1, 1, 1]},  # finals 2, 1
    ("sgd", 0.1, 1.0): {0: [10.0] * 9 + [math.nan], 1: [10.0] * 10},  # diverged: never the best
    ("adafactor", 0.0, None): {0: [4.0] * 10, 1: [2.0] * 5 + [0.0] * 5},  # finals 4, 0: mean 2
    ("adafactor", 0.0, 0.01): {0: [3.0] * 10, 1: [3.0] * 10},  # mean 3
}


def write_convergence(sweep_dir, order=None):
    items = [(key, seed, losses) for key, seeds in CURVES.items() for seed, losses in seeds.items()]
    for (algorithm, clip, lr), seed, losses in (order or (lambda x: x))(items):
        rows = [{"step": 10 * i, "train_loss": float(loss), "test_loss": float(loss) + 0.5 if i in (0, 5) else None}
                for i, loss in enumerate(losses)]
        t = trial("convergence", algorithm, clip, lr, seed)
        write(sweep_dir, t, {"convergence": rows})


PROBES = ("sgd", "adam", "adam_clip0.5")
# sharpness per (trajectory algorithm, seed, step, probe); ratio_to_sgd = sharpness / sgd sharpness.
SHARP = {
    ("sgd", 0): {0: (4.0, 0.4, 1.2), 20: (8.0, 0.8, 0.4)},
    ("sgd", 1): {0: (2.0, 0.6, 0.2), 20: (4.0, 0.8, 0.4)},
    ("adam", 0): {0: (1.0, 0.5, 0.25), 20: (2.0, 1.0, 0.5)},
}
TRAJ_LR = {"sgd": 0.1, "adam": 0.001}


def write_sharpness(sweep_dir, with_landscape=True):
    for (algorithm, seed), by_step in SHARP.items():
        t = trial("sharpness", algorithm, 0.0, TRAJ_LR[algorithm], seed)
        sharp, land, hist, curv, summary = [], [], [], [], []
        for step, values in by_step.items():
            for probe, s in zip(PROBES, values):
                summary.append({"step": step, "probe": probe, "base_loss": 3.0, "best_step": 0.1 / s,
                                "best_loss": 3.0 - 0.05 / s, "best_reduction": 0.05 / s, "rise_step": 0.2 / s,
                                "resolution": 0.01, "bracketed": True, "evaluations": 12})
                sharp.append({
                    "step": step, "probe": probe, "probe_algorithm": probe.split("_")[0],
                    "probe_clip_fraction": 0.5 if "clip" in probe else 0.0, "probe_clip_target": "grad",
                    "sharpness": s, "sharpness_raw": -s if probe == "adam_clip0.5" else s,
                    "robust": probe == "adam_clip0.5", "ratio_to_sgd": s / values[0],
                    "grad_correlation": 0.1, "update_norm": 1.0,
                    "sharpness_shifted": s if probe == "adam_clip0.5" else None,
                    "ratio_to_sgd_paper": (-s if probe == "adam_clip0.5" else s) / values[0],
                    "clip_tau": 1e-3 if "clip" in probe else None, "grad_zero_fraction": 0.25,
                    "measure_batch": "train", "measure_batch_size": 64, "measure_sub_batch_size": 64,
                })
                land += [{"step": step, "probe": probe, "offset": o, "loss": 3.0 + o * s, "loss_change": o * s}
                         for o in (-1.0, 0.0, 1.0)]
                hist += [{"step": step, "probe": probe, "scale": "absolute", "bin_lo": lo, "bin_hi": lo + 1.0,
                          "count": int(10 * s) + k}
                         for k, lo in enumerate((-3.0, -2.0, -1.0))]
            curv.append({"step": step, "top_eigenvalue": 10.0 * (seed + 1), "lanczos_iters": 20, "lanczos_tol": 1e-3,
                         "lanczos_converged": True, "hutchinson_samples": 8, "hutchinson_rel_stderr": 0.7,
                         "hutchinson_resolved": 0.1, "rank_corr_all": 0.3,
                         "rank_corr_topk": 0.6, "topk_fraction": 0.1})
        records = {"sharpness": sharp, "curvature": curv}
        if with_landscape:
            records.update(landscape=land, histogram=hist, landscape_summary=summary)
        write(sweep_dir, t, records)


# Gauss-Newton smoothness per seed and step: (L, ell, eps).
SMOOTH = {0: {0: (8.0, 2.0, 0.01), 10: (6.0, 3.0, 0.02)}, 1: {0: (12.0, 4.0, 0.03), 10: (6.0, 2.0, 0.04)}}


def write_smoothness(sweep_dir):
    for seed, by_step in SMOOTH.items():
        t = trial("smoothness", "adam", 0.0, 0.001, seed, workload="classification")
        rows = [{"step": step, "L": L, "ell": ell, "ratio": L / ell, "fraction_removed": eps,
                 "ell_random": 0.9 * L, "ratio_random": 1 / 0.9, "outlier_factor": 4.0, "n_samples": 16,
                 "gn_params": "attention", "n_params": 1000, "control_seed": 0}
                for step, (L, ell, eps) in by_step.items()]
        write(sweep_dir, t, {"smoothness": rows})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("results") / SWEEP
    write_convergence(sweep_dir)
    write_sharpness(sweep_dir)
    write_smoothness(sweep_dir)
    written = aggregate.aggregate(ResultsLayout(sweep_dir))
    return sweep_dir, written


def table(sweep_dir, name):
    return pd.read_parquet(sweep_dir / "tables" / f"{name}.parquet")


def test_writes_every_table(sweep):
    sweep_dir, written = sweep
    expected = {"sharpness", "landscape", "histogram", "topk_share", "convergence", "convergence_summary", "curvature",
                "smoothness", "table1_sharpness_ratio", "table3_convergence", "table8_smoothness", "orderings",
                "trials", "landscape_summary", "local_vs_convergence"}
    assert set(written) == expected
    assert {p.stem for p in (sweep_dir / "tables").glob("*.parquet")} == expected
    assert len(table(sweep_dir, "convergence")) == sum(len(c) for s in CURVES.values() for c in s.values())


def _reference_summary(window=5):
    """Best lr and speed-up recomputed with pandas from CURVES (independent of pipeline.tables)."""
    rows = [{"algorithm": a, "clip": c, "lr": -1.0 if lr is None else lr, "seed": seed, "step": 10 * i, "loss": loss}
            for (a, c, lr), seeds in CURVES.items() for seed, losses in seeds.items() for i, loss in enumerate(losses)]
    df = pd.DataFrame(rows)
    finals = df.groupby(["algorithm", "clip", "lr", "seed"])["loss"].apply(lambda s: s.iloc[-window:].mean())
    per_lr = finals.groupby(["algorithm", "clip", "lr"]).agg(["mean", "std"]).fillna({"mean": np.inf})
    best = per_lr.loc[per_lr.groupby(["algorithm", "clip"])["mean"].idxmin()]
    out = {}
    for (a, c, lr), r in best.iterrows():
        curve = df[(df["algorithm"] == a) & (df["clip"] == c) & (df["lr"] == lr)].groupby("step")["loss"].mean()
        out[(a, c)] = {"lr": None if lr == -1.0 else lr, "mean": r["mean"], "std": r["std"],
                       "smoothed": curve.rolling(window, min_periods=1).mean()}
    return out


def test_convergence_summary_matches_independent_computation(sweep):
    sweep_dir, _ = sweep
    got = table(sweep_dir, "convergence_summary").set_index(["algorithm", "clip_fraction"])
    ref = _reference_summary()
    assert set(got.index) == set(ref)
    for key, r in ref.items():
        row = got.loc[key]
        assert (row["best_lr"] if not pd.isna(row["best_lr"]) else None) == r["lr"], key
        assert row["final_loss_mean"] == pytest.approx(r["mean"], rel=1e-12)
        assert row["final_loss_std"] == pytest.approx(r["std"], rel=1e-12)
        assert row["n_seeds"] == 2 and row["final_window"] == 5 and row["last_step"] == 90
    clipped, base = ref[("sgd", 0.1)], ref[("sgd", 0.0)]
    target = base["mean"]
    row = got.loc[("sgd", 0.1)]
    steps = int(clipped["smoothed"][clipped["smoothed"] <= target].index[0])
    base_steps = int(base["smoothed"][base["smoothed"] <= target + 1e-9].index[0])
    assert (row["target_loss"], row["steps_to_target"], row["baseline_steps_to_target"]) == (target, steps, base_steps)
    assert row["speedup"] == pytest.approx(base_steps / steps)
    assert row["loss_ratio"] == pytest.approx(clipped["mean"] / target)
    # The same numbers by hand: finals 3,4 vs 2,1 -> target 3.5; smoothed mean curves reach it at
    # step 60 (clipped) and 90 (unclipped).
    assert (target, steps, base_steps, row["speedup"]) == (3.5, 60, 90, 1.5)
    assert pd.isna(got.loc[("adafactor", 0.0)]["best_lr"])  # null: the relative step won
    assert pd.isna(got.loc[("sgd", 0.0)]["speedup"])
    # last evaluated test loss (step 50): loss + 0.5, mean over seeds at the best lr
    assert got.loc[("sgd", 0.0)]["final_test_loss_mean"] == pytest.approx(((10 - 5) + (11 - 5)) / 2 + 0.5)


def test_table3_pairs_unclipped_and_clipped(sweep):
    sweep_dir, _ = sweep
    t3 = table(sweep_dir, "table3_convergence").set_index("algorithm")
    sgd = t3.loc["sgd"]
    assert (sgd["lr"], sgd["final_loss_mean"], sgd["clip_fraction"], sgd["clip_lr"]) == (0.1, 3.5, 0.1, 0.1)
    assert sgd["clip_final_loss_mean"] == 1.5 and sgd["clip_final_loss_std"] == pytest.approx(math.sqrt(0.5))
    assert (sgd["steps_to_target"], sgd["clip_steps_to_target"], sgd["speedup"]) == (90, 60, 1.5)
    assert sgd["loss_ratio"] == pytest.approx(1.5 / 3.5)
    ada = t3.loc["adafactor"]
    assert ada["final_loss_mean"] == 2.0 and pd.isna(ada["lr"]) and pd.isna(ada["clip_fraction"])


def test_table1_ratios_and_means_over_seeds(sweep):
    sweep_dir, _ = sweep
    t1 = table(sweep_dir, "table1_sharpness_ratio")
    sgd = t1[t1.trajectory == "sgd"].set_index(["step", "probe", "seed"])
    assert sgd.loc[(0, "adam", 0), "ratio_to_sgd"] == pytest.approx(0.4 / 4.0)
    assert sgd.loc[(0, "adam", 1), "ratio_to_sgd"] == pytest.approx(0.6 / 2.0)
    assert sgd.loc[(0, "adam", 0), "ratio_mean"] == pytest.approx((0.1 + 0.3) / 2)
    assert sgd.loc[(20, "adam_clip0.5", 1), "ratio_mean"] == pytest.approx((0.4 / 8.0 + 0.4 / 4.0) / 2)
    # independent: pandas groupby over the tidy sharpness table
    sharp = table(sweep_dir, "sharpness")
    ref = sharp.groupby(["algorithm", "step", "probe"])["ratio_to_sgd"].mean()
    got = t1.groupby(["algorithm", "step", "probe"])["ratio_mean"].first()
    pd.testing.assert_series_equal(got.sort_index(), ref.sort_index(), check_names=False)
    assert set(t1.n_seeds[t1.trajectory == "sgd"]) == {2} and set(t1.n_seeds[t1.trajectory == "adam"]) == {1}
    assert len(t1) == len(sharp)


def test_table8_smoothness_means(sweep):
    sweep_dir, _ = sweep
    t8 = table(sweep_dir, "table8_smoothness").set_index("step")
    assert list(t8.index) == [0, 10]
    assert t8.loc[0, ["L", "ell", "ratio"]].tolist() == [10.0, 3.0, 3.5]  # ratio: mean of 4 and 3
    assert t8.loc[0, "fraction_removed"] == pytest.approx(0.02)
    assert t8.loc[10, ["L", "ell", "ratio"]].tolist() == [6.0, 2.5, 2.5]
    assert set(t8.trajectory) == {"adam"} and set(t8.workload) == {"classification"}


def test_curvature_joined_with_raw_sharpness(sweep):
    sweep_dir, _ = sweep
    cur = table(sweep_dir, "curvature")
    assert len(cur) == 3 * 2 * len(PROBES)  # trials x steps x probes
    row = cur[(cur.algorithm == "sgd") & (cur.seed == 1) & (cur.step == 0) & (cur.probe == "sgd")].iloc[0]
    assert (row.top_eigenvalue, row.directional_sharpness, row.sharpness_to_top_eigenvalue) == (20.0, 2.0, 0.1)
    robust = cur[(cur.probe == "adam_clip0.5") & (cur.algorithm == "adam") & (cur.step == 20)].iloc[0]
    assert robust.directional_sharpness == -0.5  # the raw value, not the robust one


def _table_bytes(layout, names):
    return {name: layout.table_path(name).read_bytes() for name in names}


def test_reaggregation_is_byte_identical_and_order_independent(sweep, tmp_path):
    sweep_dir, written = sweep
    layout = ResultsLayout(sweep_dir)
    before = _table_bytes(layout, written)
    again = aggregate.aggregate(layout)
    assert _table_bytes(layout, again) == before
    other = tmp_path / SWEEP  # same trials, written in reverse order
    write_smoothness(other)
    write_sharpness(other)
    write_convergence(other, order=lambda items: items[::-1])
    third = aggregate.aggregate(ResultsLayout(other))
    assert _table_bytes(ResultsLayout(other), third) == before


def test_only_convergence_trials(tmp_path):
    write_convergence(tmp_path)
    written = aggregate.aggregate(ResultsLayout(tmp_path))
    assert set(written) == {"convergence", "convergence_summary", "table3_convergence", "trials"}


def test_sharpness_experiment_always_gives_landscape_and_histogram(tmp_path):
    write_sharpness(tmp_path, with_landscape=False)
    written = aggregate.aggregate(ResultsLayout(tmp_path))
    assert {"sharpness", "landscape", "histogram", "table1_sharpness_ratio", "curvature"} <= set(written)
    assert len(table(tmp_path, "landscape")) == 0 and "offset" in table(tmp_path, "landscape").columns


def test_stale_tables_are_removed(tmp_path):
    write_convergence(tmp_path)
    stale = tmp_path / "tables" / "table8_smoothness.parquet"
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    aggregate.aggregate(ResultsLayout(tmp_path))
    assert not stale.exists()


def _error_line(capsys):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_main_errors(tmp_path, capsys):
    assert main(["aggregate", str(tmp_path / "nope")]) == 2
    assert "does not exist" in _error_line(capsys)
    assert main(["aggregate", str(tmp_path)]) == 2
    assert "no sweep" in _error_line(capsys)
    (tmp_path / "empty" / "trials").mkdir(parents=True)
    assert main(["aggregate", str(tmp_path / "empty")]) == 2
    assert "no trial records" in _error_line(capsys)
    assert main(["aggregate"]) == 2
    assert "RESULTS_DIR" in _error_line(capsys)


def test_main_resolves_the_sweep_dir(tmp_path, capsys, monkeypatch):
    from pipeline import report

    seen = []
    monkeypatch.setattr(aggregate, "aggregate", lambda layout: seen.append(layout.sweep_dir) or {})
    monkeypatch.setattr(report, "write_report", lambda layout, tables: {"report": layout.report_path})
    (tmp_path / "a" / "trials").mkdir(parents=True)
    assert main(["aggregate", str(tmp_path)]) == 0
    assert str(tmp_path / "a") in capsys.readouterr().out
    assert main(["aggregate", str(tmp_path / "a")]) == 0
    assert seen == [tmp_path / "a", tmp_path / "a"]
    capsys.readouterr()
    (tmp_path / "b" / "trials").mkdir(parents=True)
    assert main(["aggregate", str(tmp_path)]) == 2
    err = _error_line(capsys)
    assert "2 sweeps" in err and str(tmp_path / "a") in err and str(tmp_path / "b") in err


def test_best_lr_at_the_edge_of_its_grid_is_flagged(sweep):
    sweep_dir, _ = sweep
    summary = table(sweep_dir, "convergence_summary").set_index(["algorithm", "clip_fraction"])
    # sgd: best lr 0.1 is the smaller end of [0.1, 1.0]; adafactor: the relative step has no neighbours
    assert bool(summary.loc[("sgd", 0.0), "best_lr_at_edge"]) and bool(summary.loc[("sgd", 0.1), "best_lr_at_edge"])
    assert summary.loc[("adafactor", 0.0), "best_lr_at_edge"] is None
    t3 = table(sweep_dir, "table3_convergence")
    row = t3[t3["algorithm"] == "sgd"].iloc[0]
    assert bool(row["lr_at_edge"]) and bool(row["clip_lr_at_edge"])


def test_local_vs_convergence_ranks_the_probes(sweep):
    sweep_dir, _ = sweep
    local = table(sweep_dir, "local_vs_convergence")
    sgd_traj = local[local["trajectory"] == "sgd"].set_index("probe")
    # step 20 only (step 0 left out): reductions 0.05 / s with s = 8, 0.8, 0.4 (mean over two seeds)
    assert list(sgd_traj.sort_values("reduction_rank").index) == ["adam_clip0.5", "adam", "sgd"]
    assert sgd_traj.loc["sgd", "convergence_rank"] == 1 and pd.isna(sgd_traj.loc["adam", "convergence_rank"])
    assert sgd_traj.loc["sgd", "n_ranked"] == 1 and sgd_traj["rank_correlation"].isna().all()
