"""Derived tables of the aggregate stage: convergence summary, paper Tables 1/3/8, curvature beside sharpness.

Every function takes tidy rows (dicts, as ``pa.Table.to_pylist`` gives them) and returns rows of
one table in pipeline/schemas.py; means use math.fsum, so results do not depend on row order.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from pipeline.labels import SETTING_KEY, TRAJECTORY_KEY, optimizer_label
from pipeline.schemas import DIVERGED, FINISHED, IDENTITY_LEVELS

PARTLY_DIVERGED = "partly_diverged"  # some of a setting's seeds diverged, not all

Row = Mapping[str, object]

# Final loss of a run = mean train loss over its last FINAL_WINDOW logged steps: one minibatch
# loss is too noisy to rank learning rates by (paper Table 3 reports the loss at the end of training).
FINAL_WINDOW = 5
# The unclipped run reaches its own final loss at its last step in exact arithmetic; allow for
# the rounding between "mean over seeds of window means" and "window mean of the mean curve".
_REACH_RTOL = 1e-9


def _lr_key(lr: float | None) -> tuple[bool, float]:
    # A fixed learning rate sorts before Adafactor's relative step (lr None).
    return (lr is None, 0.0 if lr is None else lr)


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; exact-rounded when finite, NaN/inf propagate (a diverged seed shows)."""
    values = [float(v) for v in values]
    # math.fsum raises on inf + -inf; plain sum gives the NaN that the table should show.
    total = math.fsum(values) if all(math.isfinite(v) for v in values) else sum(values)
    return total / len(values)


def sample_std(values: Sequence[float]) -> float | None:
    """Standard deviation over seeds with Bessel's correction (ddof=1); None for one seed."""
    if len(values) < 2:
        return None
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def group_rows(rows: Iterable[Row], keys: Sequence[str]) -> dict[tuple, list[Row]]:
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(row)
    return groups


def key_order(key: Sequence[object]) -> tuple:
    """A sort key for group keys that may hold None (a label, Adafactor's lr) beside values: None first."""
    return tuple((v is not None, v if v is not None else 0) for v in key)


def identity(row: Row, keys: Sequence[str]) -> dict[str, object]:
    """The identifying columns `keys` (pipeline.labels.SETTING_KEY, TRAJECTORY_KEY) copied from a row."""
    return {k: row[k] for k in keys}


# --- convergence -----------------------------------------------------------------------------

def _diverged(run: Sequence[Row]) -> bool:
    # Records from before the status column are finished runs (pipeline.records reads them so).
    return any(r.get("status", FINISHED) == DIVERGED for r in run)


def _final(run: Sequence[Row], window: int) -> float | None:
    """Mean train loss over the run's last ``window`` logged steps after step 0 (a step-0 loss is
    the untrained model's, never a final loss); None when the run logged nothing after step 0."""
    losses = [float(r["train_loss"]) for r in run if int(r["step"]) > 0]
    return mean(losses[-window:]) if losses else None


def _final_test(run: Sequence[Row]) -> float | None:
    """The run's last evaluated test loss after step 0 (None when it was evaluated only at step 0)."""
    return next((float(r["test_loss"]) for r in reversed(run) if r["test_loss"] is not None and int(r["step"]) > 0),
                None)


def _mean_curve(runs: Sequence[Sequence[Row]]) -> list[tuple[int, float]]:
    """Mean train loss over seeds at the steps that every seed logged."""
    if not runs:
        return []
    common = set.intersection(*({int(r["step"]) for r in run} for run in runs))
    by_step: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for r in run:
            if r["step"] in common:
                by_step[int(r["step"])].append(float(r["train_loss"]))
    return [(step, mean(by_step[step])) for step in sorted(by_step)]


def steps_to_reach(curve: Sequence[tuple[int, float]], target: float, window: int) -> int | None:
    """First logged step at which the trailing mean of the last ``window`` points is <= target."""
    losses = [loss for _, loss in curve]
    for i, (step, _) in enumerate(curve):
        smoothed = mean(losses[max(0, i - window + 1) : i + 1])
        if smoothed <= target + _REACH_RTOL * abs(target):
            return step
    return None


def _status(n_diverged: int, n_runs: int) -> str:
    return FINISHED if n_diverged == 0 else DIVERGED if n_diverged == n_runs else PARTLY_DIVERGED


def _lr_result(runs: Sequence[Sequence[Row]], window: int) -> dict[str, object]:
    """One learning rate's runs over seeds: final losses from the finished runs only (a diverged
    run has no final loss), the mean curve of the finished runs, how many diverged."""
    finished = [run for run in runs if not _diverged(run)]
    finals = [f for f in (_final(run, window) for run in finished) if f is not None]
    tests = [t for t in (_final_test(run) for run in finished) if t is not None]
    n_diverged = len(runs) - len(finished)
    return {
        "final_loss_mean": mean(finals) if finals else None,
        "final_loss_std": sample_std(finals),
        "final_test_loss_mean": mean(tests) if tests else None,
        "n_seeds": len(runs),
        "n_diverged": n_diverged,
        "status": _status(n_diverged, len(runs)),
        "last_step": max(int(run[-1]["step"]) for run in (finished or runs)),
        "curve": _mean_curve(finished),
    }


def convergence_summary(rows: Iterable[Row], *, final_window: int = FINAL_WINDOW) -> list[dict[str, object]]:
    """Per setting (pipeline.labels.SETTING_KEY: block label, workload, algorithm, clip, hparams): best
    lr, final loss over seeds, speed-up from clipping.

    best lr: among the learning rates at which no seed diverged (when there is one), the lr with
    the lowest mean over seeds of the final train loss (NaN counts as +inf; ties go to the smaller
    lr); a diverged run has no final loss, and a step-0 loss is never one. `status` says whether
    the runs at that lr finished, all diverged or partly diverged (`n_diverged` of `n_seeds`).
    best_lr_at_edge flags a best lr at either end of its grid.
    speedup (clipped rows only): steps the unclipped run of the same
    algorithm (at its best lr) needs to reach its own final loss, divided by the steps the clipped
    run (at its best lr) needs to reach that same loss; both read off the seed-mean loss curve
    smoothed with the same trailing window. > 1 means clipping converges faster; null when the
    clipped run never gets there. loss_ratio = clipped final loss / unclipped final loss. The
    baseline is found by _baseline; its label is in baseline_label.
    """
    if final_window < 1:
        raise ValueError(f"final_window: must be >= 1, got {final_window}")
    best: dict[tuple, dict[str, object]] = {}
    for key, group in sorted(group_rows(rows, SETTING_KEY).items(), key=lambda kv: key_order(kv[0])):
        by_lr = group_rows(group, ("lr",))
        results = {}
        for (lr,), lr_rows in by_lr.items():
            runs = [sorted(run, key=lambda r: r["step"]) for run in group_rows(lr_rows, ("trial_id",)).values()]
            results[lr] = _lr_result(runs, final_window)
        ranked = sorted(results, key=lambda lr: (results[lr]["n_diverged"] > 0,
                                                 _nan_last(results[lr]["final_loss_mean"]), _lr_key(lr)))
        best[key] = {"best_lr": ranked[0], "n_lrs": len(results), "best_lr_at_edge": lr_at_edge(ranked[0], results),
                     **results[ranked[0]]}
    out = []
    for key, res in best.items():
        setting = dict(zip(SETTING_KEY, key))
        row = {
            **setting, "baseline_label": None, "best_lr": res["best_lr"],
            "status": res["status"], "n_lrs": res["n_lrs"], "best_lr_at_edge": res["best_lr_at_edge"],
            "n_seeds": res["n_seeds"], "n_diverged": res["n_diverged"], "final_window": final_window,
            "last_step": res["last_step"], "final_loss_mean": res["final_loss_mean"],
            "final_loss_std": res["final_loss_std"], "final_test_loss_mean": res["final_test_loss_mean"],
            "target_loss": None, "steps_to_target": None, "baseline_steps_to_target": None,
            "speedup": None, "loss_ratio": None,
        }
        base_key = _baseline(best, setting) if setting["clip_fraction"] != 0 else None
        base = best[base_key] if base_key is not None else None
        if base is not None and base["final_loss_mean"] is not None:
            target = float(base["final_loss_mean"])
            clipped_steps = steps_to_reach(res["curve"], target, final_window)
            base_steps = steps_to_reach(base["curve"], target, final_window)
            row["baseline_label"] = dict(zip(SETTING_KEY, base_key))["label"]
            row["target_loss"] = target
            row["steps_to_target"] = clipped_steps
            row["baseline_steps_to_target"] = base_steps
            if clipped_steps and base_steps is not None:
                row["speedup"] = base_steps / clipped_steps
            if res["final_loss_mean"] is not None and target != 0:
                row["loss_ratio"] = float(res["final_loss_mean"]) / target
        out.append(row)
    return out


def lr_at_edge(best: float | None, grid: Iterable[float | None]) -> bool | None:
    """Whether the best lr is the smallest or the largest fixed lr of its grid (a one-point grid
    included): the grid does not bracket the optimum, a better lr may lie beyond it. None for
    Adafactor's relative step, which has no neighbours."""
    if best is None:
        return None
    fixed = [lr for lr in grid if lr is not None]
    return best in (min(fixed), max(fixed))


def _nan_last(x: object) -> float:
    return math.inf if x is None or math.isnan(float(x)) else float(x)


def _baseline(best: Mapping[tuple, Mapping[str, object]], setting: Mapping[str, object]) -> tuple | None:
    """The unclipped setting a clipped one is compared with: same sweep, workload, algorithm and
    hparams, clip fraction 0 (target "grad" preferred: with fraction 0 it is moot); from the same
    block label when it has one, else from the one other label that has it (a block that only
    re-runs the clipped variant on its own lr grid is compared with the main block's run)."""
    labels = sorted({dict(zip(SETTING_KEY, k))["label"] for k in best}, key=lambda v: key_order((v,)))
    for group in ([setting["label"]], [v for v in labels if v != setting["label"]]):
        found = []
        for label in group:
            for target in ("grad", "update"):
                key = tuple({**setting, "clip_fraction": 0.0, "clip_target": target, "label": label}[k]
                            for k in SETTING_KEY)
                if key in best:
                    found.append(key)
                    break
        if len(found) == 1:
            return found[0]
        if found:  # several other blocks have one: which is meant is not ours to guess
            return None
    return None


def table3_convergence(summary: Sequence[Row]) -> list[dict[str, object]]:
    """Paper Table 3: each clipped setting beside the unclipped one it was compared with (in the
    summary's baseline_label); an unclipped setting that no clipped one refers to gets a row alone."""
    by_key = {tuple(r[k] for k in SETTING_KEY): r for r in summary}
    out, used = [], set()
    for clip in sorted((r for r in summary if r["clip_fraction"] != 0), key=lambda r: key_order(_key(r))):
        base_key = _baseline(by_key, clip)
        base = by_key[base_key] if base_key is not None else None
        if base is not None:
            used.add(_key(base))
        out.append(_table3_row(clip, base, clip))
    for plain in sorted((r for r in summary if r["clip_fraction"] == 0), key=lambda r: key_order(_key(r))):
        if _key(plain) not in used:
            out.append(_table3_row(plain, plain, None))
    return out


def _key(row: Row) -> tuple:
    return tuple(row[k] for k in SETTING_KEY)


def _table3_row(ident: Row, base: Row | None, clip: Row | None) -> dict[str, object]:
    return {
        **identity(ident, SETTING_KEY),
        "clip_fraction": clip["clip_fraction"] if clip else None,
        "clip_target": clip["clip_target"] if clip else None,
        "baseline_label": base["label"] if base else None,
        "lr": base["best_lr"] if base else None,
        "lr_at_edge": base["best_lr_at_edge"] if base else None,
        "final_loss_mean": base["final_loss_mean"] if base else None,
        "final_loss_std": base["final_loss_std"] if base else None,
        "n_seeds": base["n_seeds"] if base else None,
        "n_diverged": base["n_diverged"] if base else None,
        "clip_lr": clip["best_lr"] if clip else None,
        "clip_lr_at_edge": clip["best_lr_at_edge"] if clip else None,
        "clip_final_loss_mean": clip["final_loss_mean"] if clip else None,
        "clip_final_loss_std": clip["final_loss_std"] if clip else None,
        "clip_n_seeds": clip["n_seeds"] if clip else None,
        "clip_n_diverged": clip["n_diverged"] if clip else None,
        "steps_to_target": clip["baseline_steps_to_target"] if clip else None,
        "clip_steps_to_target": clip["steps_to_target"] if clip else None,
        "speedup": clip["speedup"] if clip else None,
        "loss_ratio": clip["loss_ratio"] if clip else None,
    }


# --- sharpness, smoothness, curvature --------------------------------------------------------

def table1_sharpness_ratio(rows: Iterable[Row]) -> list[dict[str, object]]:
    """Paper Tables 1, 4-7: per trajectory, step and probe, each seed's ratio to SGD and their mean.

    Two ratios: ours (``ratio_to_sgd``: each probe's robust-or-raw value over SGD's) and the
    paper's (``ratio_to_sgd_paper``: raw over raw, Eq. 4 values only where SGD's raw value is
    negative). ratio_mean / ratio_paper_mean average the seeds whose ratio is not null and whose
    trial did not diverge (its rows stay, with their status); n_seeds counts those of ours.
    ``undecided``: the probe's or SGD's sharpness is negative even after the robust step, so
    "flatter than SGD" cannot be read off the ratio; n_undecided counts such seeds.
    """
    rows = list(rows)
    sgd = {(r["trial_id"], r["step"]): float(r["sharpness"]) for r in rows if r["probe"] == "sgd"}
    out = []
    for group in group_rows(rows, TRAJECTORY_KEY + ("step", "probe")).values():
        live = [r for r in group if r.get("status", FINISHED) != DIVERGED]
        ratios = [float(r["ratio_to_sgd"]) for r in live if r["ratio_to_sgd"] is not None]
        papers = [float(r["ratio_to_sgd_paper"]) for r in live if r.get("ratio_to_sgd_paper") is not None]
        undecided = {id(r): _undecided(r, sgd.get((r["trial_id"], r["step"]))) for r in group}
        for r in group:
            out.append({
                **identity(r, IDENTITY_LEVELS["trial"]), **{k: r[k] for k in ("step", "probe", "ratio_to_sgd")},
                "status": r.get("status", FINISHED),
                "trajectory": optimizer_label(r["algorithm"], r["clip_fraction"], r["clip_target"]),
                "ratio_mean": mean(ratios) if ratios else None, "n_seeds": len(ratios),
                "ratio_to_sgd_paper": r.get("ratio_to_sgd_paper"),
                "ratio_paper_mean": mean(papers) if papers else None,
                "undecided": undecided[id(r)], "n_undecided": sum(undecided[id(x)] for x in live),
            })
    return out


def _undecided(row: Row, sgd: float | None) -> bool:
    # Negative after the robust step: the sign, not the size, decides such a ratio.
    return float(row["sharpness"]) < 0 or (sgd is not None and sgd < 0)


def table8_smoothness(rows: Iterable[Row]) -> list[dict[str, object]]:
    """Paper Table 8: per trajectory and measurement point, L, ell, L/ell and eps, mean over seeds.

    ``ratio`` is the mean of each seed's L/ell (not the ratio of the means), ``ratio_random``
    likewise for the random-removal control; ``gn_params`` names the coordinates measured. Seeds
    whose trial diverged are left out (counted in n_diverged); a point where every seed diverged
    has no row.
    """
    out = []
    keys = TRAJECTORY_KEY + ("outlier_factor", "gn_params", "control_seed", "step")
    columns = ("L", "ell", "ratio", "fraction_removed", "ell_random", "ratio_random")
    for everyone in group_rows(rows, keys).values():
        group = [r for r in everyone if r.get("status", FINISHED) != DIVERGED]
        if not group:
            continue
        first = group[0]
        out.append({
            **{k: first[k] for k in keys},
            "trajectory": optimizer_label(first["algorithm"], first["clip_fraction"], first["clip_target"]),
            "n_seeds": len(group), "n_diverged": len(everyone) - len(group),
            **{col: mean([float(r[col]) for r in group]) for col in columns},
        })
    return out


def curvature_with_sharpness(curvature: Iterable[Row], sharpness: Iterable[Row]) -> list[dict[str, object]]:
    """Each curvature row beside the raw directional sharpness of every probe at the same trial and step.

    The raw value (not the robust one) is measured at the same weights as the top eigenvalue, so
    sharpness_to_top_eigenvalue <= 1 up to the Lanczos tolerance (v^T H v / ||v||^2 <= lambda_max).
    """
    by_point = group_rows(sharpness, ("trial_id", "step"))
    out = []
    for row in curvature:
        matches = sorted(by_point.get((row["trial_id"], row["step"]), []), key=lambda r: r["probe"])
        top = float(row["top_eigenvalue"])
        for s in matches or [None]:
            raw = None if s is None else float(s["sharpness_raw"])
            out.append({
                **row,
                "probe": None if s is None else s["probe"],
                "directional_sharpness": raw,
                "sharpness_to_top_eigenvalue": raw / top if raw is not None and top != 0 else None,
            })
    return out
