"""Sec. 5's table: local reduction ranks beside convergence ranks, and their correlation, by hand."""

from __future__ import annotations

import pytest

from pipeline.local_convergence import local_vs_convergence

KEY = {"sweep": "s", "label": None, "workload": "w", "algorithm": "sgd", "clip_fraction": 0.0, "clip_target": "grad",
       "hparams": "{}", "lr": 0.1}


def summary(step, probe, reduction, **key):
    return {**KEY, **key, "step": step, "probe": probe, "best_reduction": reduction}


def converged(algorithm, clip, target, final, lr=0.01, label=None):
    return {"sweep": "s", "label": label, "workload": "w", "algorithm": algorithm, "clip_fraction": clip,
            "clip_target": target, "hparams": "{}", "best_lr": lr, "final_loss_mean": final}


def test_ranks_and_spearman_by_hand():
    rows = [summary(0, p, 99.0) for p in ("sgd", "adam", "sgd_clip0.1", "lion")]  # step 0: left out
    rows += [summary(10, "sgd", 0.1), summary(10, "adam", 0.4), summary(10, "sgd_clip0.1", 0.3),
             summary(10, "lion", 0.2), summary(20, "sgd", 0.1), summary(20, "adam", 0.2),
             summary(20, "sgd_clip0.1", 0.3), summary(20, "lion", 0.2), summary(20, "lion", float("nan"))]
    runs = [converged("sgd", 0.0, "grad", 3.0), converged("adam", 0.0, "grad", 1.0),
            converged("sgd", 0.1, "grad", 2.0)]  # no lion run
    out = {r["probe"]: r for r in local_vs_convergence(rows, runs)}
    # mean reductions: adam 0.3, sgd_clip0.1 0.3, lion 0.2, sgd 0.1 -> ranks (ties by name) 1, 2, 3, 4
    assert [out[p]["reduction_rank"] for p in ("adam", "sgd_clip0.1", "lion", "sgd")] == [1, 2, 3, 4]
    assert out["adam"]["best_reduction_mean"] == pytest.approx(0.3) and out["lion"]["n_points"] == 2
    assert [out[p]["convergence_rank"] for p in ("adam", "sgd_clip0.1", "sgd")] == [1, 2, 3]
    assert out["lion"]["convergence_rank"] is None and out["lion"]["final_loss_mean"] is None
    # reduction ranks of the matched probes (1, 2, 4), re-ranked among them (1, 2, 3), vs (1, 2, 3): rho = 1
    assert out["sgd"]["rank_correlation"] == pytest.approx(1.0) and out["sgd"]["n_ranked"] == 3
    assert {r["trajectory"] for r in out.values()} == {"sgd"}


def test_reversed_order_gives_a_negative_correlation():
    rows = [summary(5, p, r) for p, r in (("a", 0.3), ("b", 0.2), ("c", 0.1))]
    runs = [converged(p, 0.0, "grad", f) for p, f in (("a", 3.0), ("b", 2.0), ("c", 1.0))]
    out = local_vs_convergence(rows, runs)
    assert out[0]["rank_correlation"] == pytest.approx(-1.0)


def test_trajectories_differing_in_hparams_stay_apart_and_a_block_label_picks_its_run():
    rows = [summary(5, p, r, hparams=h, label="m") for h in ('{"momentum":0.0}', '{"momentum":0.9}')
            for p, r in (("a", 0.3), ("b", 0.2), ("c", 0.1))]
    # two convergence blocks train "a": the trajectory's own block label ("m") is the one ranked
    runs = [converged("a", 0.0, "grad", 3.0, label="m"), converged("a", 0.0, "grad", 0.5, label="other"),
            converged("b", 0.0, "grad", 2.0), converged("c", 0.0, "grad", 1.0)]
    out = local_vs_convergence(rows, runs)
    assert sorted({r["hparams"] for r in out}) == ['{"momentum":0.0}', '{"momentum":0.9}'] and len(out) == 6
    assert all(r["label"] == "m" for r in out)
    assert {r["final_loss_mean"] for r in out if r["probe"] == "a"} == {3.0}
    assert [r["rank_correlation"] for r in out] == [pytest.approx(-1.0)] * 6


def test_rho_stays_in_range_when_few_probes_have_a_convergence_run():
    # twelve probes ranked by reduction, three with a run, in the reverse order: rho = -1 (ranks of a
    # subset taken as they are would give 1 - 6 * (4 + 16 + 121) / 24 = -34)
    probes = [f"p{i:02d}" for i in range(12)]
    rows = [summary(10, p, 1.0 - i / 100) for i, p in enumerate(probes)]
    rows = [r for r in rows if r["probe"] not in ("p00", "p05", "p11")]
    rows += [summary(10, "sgd", 1.0), summary(10, "adam", 0.95), summary(10, "lion", 0.89)]
    runs = [converged("sgd", 0.0, "grad", 3.0), converged("adam", 0.0, "grad", 2.0),
            converged("lion", 0.0, "grad", 1.0)]
    out = {r["probe"]: r for r in local_vs_convergence(rows, runs)}
    assert [out[p]["reduction_rank"] for p in ("sgd", "adam", "lion")] == [1, 6, 12]
    assert out["sgd"]["rank_correlation"] == pytest.approx(-1.0) and out["sgd"]["n_ranked"] == 3
