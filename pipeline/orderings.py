"""The paper's qualitative claims, checked per workload against a sweep's aggregate tables.

Pan & Li 2023 (arXiv 2306.00204) make three orderings claims that our tables can test:

- Sec. 3, Tables 1 and 4-7: on transformers the adaptive algorithms' update directions are far
  flatter than SGD's (directional sharpness ratio to SGD below 1); App. E: on a ResNet the
  advantage disappears, so there the paper expects the ordering NOT to hold.
- Sec. 4, Tables 1 and 4-7: coordinate-wise clipping lowers each algorithm's directional
  sharpness (clipped probe below its unclipped twin).
- App. D, Table 8: a few coordinates carry the bad smoothness: removing the few percent whose
  Gauss-Newton row norm is an outlier gives ell < L (L/ell > 1 with eps at most a few percent).

Each claim is tested at every measurement point (mean over seeds); a row says at what fraction of
the points it held and whether that is a majority (`holds`), beside what the paper found
(`paper`, null where the paper says nothing) and whether the two agree. Step 0 is left out when
later points exist: there every probe has seen one gradient and Adam, Lion and signSGD coincide.
Trials that diverged are left out (their points are not in the seed means), and each row says so.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping

from pipeline.labels import ADAPTIVE_PROBES, optimizer_label, parse_label
from pipeline.schemas import DIVERGED
from pipeline.tables import group_rows
from pipeline.workloads import WORKLOADS

Row = Mapping[str, object]

# "A few percent" of coordinates removed: the paper's words (App. D); the 5% line is ours.
FEW_PERCENT = 0.05

_TRAJ = ("sweep", "workload", "trajectory", "lr")


def _series(table1: Iterable[Row]) -> dict[tuple, dict[str, dict[int, float]]]:
    """Trajectory key -> probe -> step -> seed-mean ratio to SGD; step 0 dropped when later steps exist."""
    out = {}
    for key, group in group_rows(table1, _TRAJ).items():
        unique = {(r["step"], r["probe"]): float(r["ratio_mean"]) for r in group if r["ratio_mean"] is not None}
        later = {k: v for k, v in unique.items() if k[0] > 0}
        series: dict[str, dict[int, float]] = {}
        for (step, probe), ratio in sorted((later or unique).items()):
            series.setdefault(probe, {})[step] = ratio
        out[key] = series
    return out


def _finite(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _row(key: tuple, claim: str, subject: str, values: list[float], holding: list[bool],
         paper: bool | None, detail: str) -> dict[str, object]:
    sweep, workload, trajectory, lr = key
    fraction = sum(holding) / len(holding) if holding else None
    holds = None if fraction is None else fraction > 0.5
    return {
        "sweep": sweep, "workload": workload, "claim": claim, "trajectory": trajectory, "lr": lr,
        "subject": subject, "n_points": len(holding), "measured": statistics.median(values) if values else None,
        "fraction_holding": fraction, "holds": holds, "paper": paper,
        "agrees": None if holds is None or paper is None else holds == paper, "detail": detail,
    }


def _clipped_twin(label: str, labels: set[str]) -> str | None:
    """The unclipped probe a clipped one is compared with: adam_clipupdate0.5 -> adam."""
    try:
        algorithm, fraction, _ = parse_label(label)
    except ValueError:  # a config's own probe label, not an optimizer label: no twin
        return None
    return algorithm if fraction != 0 and algorithm in labels else None


def median_ratios(table1: Iterable[Row]) -> dict[tuple, float]:
    """(sweep, workload, trajectory, lr, probe) -> median over the measurement points (step 0
    left out when later ones exist) of the seed-mean sharpness ratio to SGD: the report's glance."""
    return {(*key, probe): statistics.median(values)
            for key, series in _series(table1).items() for probe, by_step in series.items()
            if (values := _finite(by_step.values()))}


def sharpness_orderings(table1: Iterable[Row]) -> list[dict[str, object]]:
    """Claims 1 and 2 from paper Table 1's layout (pipeline.tables.table1_sharpness_ratio rows)."""
    out = []
    for key, series in sorted(_series(table1).items(), key=lambda kv: str(kv[0])):
        # The paper's App. E expects SGD not to be the sharpest on a non-transformer (its ResNet).
        transformer = WORKLOADS[key[1]].is_transformer if key[1] in WORKLOADS else True
        for probe in (p for p in ADAPTIVE_PROBES if p in series):
            values = _finite(series[probe].values())
            out.append(_row(key, "adaptive_flatter_than_sgd", probe, values, [v < 1 for v in values],
                            transformer, "median sharpness ratio to SGD over steps; holds where < 1"))
        for probe in sorted(series):
            twin = _clipped_twin(probe, set(series))
            if twin is None:
                continue
            base = series[twin]
            steps = sorted(set(series[probe]) & set(base))
            # A zero unclipped sharpness leaves the point undecided: counted, not holding.
            ratios = [series[probe][s] / base[s] if base[s] != 0 else math.nan for s in steps]
            out.append(_row(key, "clipping_lowers_sharpness", f"{probe} vs {twin}", _finite(ratios),
                            [math.isfinite(v) and v < 1 for v in ratios], True if transformer else None,
                            "median sharpness ratio clipped / unclipped over steps; holds where < 1"))
    return out


def smoothness_orderings(table8: Iterable[Row]) -> list[dict[str, object]]:
    """Claim 3 from paper Table 8's layout (pipeline.tables.table8_smoothness rows)."""
    out = []
    for key, group in sorted(group_rows(table8, _TRAJ + ("outlier_factor",)).items(), key=lambda kv: str(kv[0])):
        later = [r for r in group if r["step"] > 0] or group
        ratios = _finite(r["ratio"] for r in later)
        holding = [float(r["ratio"]) > 1 and float(r["fraction_removed"]) <= FEW_PERCENT for r in later]
        eps = max(float(r["fraction_removed"]) for r in later)
        out.append(_row(key[:4], "few_coordinates_carry_bad_smoothness", f"factor {key[4]:g}", ratios, holding,
                        True, f"median L/ell over steps (max eps {eps:.2%}); holds where L/ell > 1 and "
                        f"eps <= {FEW_PERCENT:.0%}"))
    return out


def paper_orderings(table1: Iterable[Row], table8: Iterable[Row]) -> list[dict[str, object]]:
    """All three claims, per workload (rows of pipeline.schemas.ORDERINGS)."""
    return sharpness_orderings(table1) + smoothness_orderings(table8)


def note_diverged(checks: list[dict[str, object]], trials: Iterable[Row]) -> list[dict[str, object]]:
    """The checks with the diverged trials (rows of the `trials` table) that they leave out named in
    `detail`; a trajectory whose every trial diverged gets one row that says it was left out."""
    left_out: dict[tuple, list[str]] = {}
    for t in trials:
        if t.get("status") == DIVERGED and t["experiment"] in ("sharpness", "smoothness"):
            key = (t["experiment"], t["sweep"], t["workload"],
                   optimizer_label(t["algorithm"], t["clip_fraction"], t["clip_target"]), t["lr"])
            left_out.setdefault(key, []).append(str(t["trial_id"]))
    def key_of(row: Row) -> tuple:
        experiment = "smoothness" if row["claim"] == "few_coordinates_carry_bad_smoothness" else "sharpness"
        return (experiment, row["sweep"], row["workload"], row["trajectory"], row["lr"])

    out = []
    for row in checks:
        ids = left_out.get(key_of(row))
        out.append({**row, "detail": f"{row['detail']}; left out: {len(ids)} diverged trial(s) "
                    f"({', '.join(sorted(ids))})"} if ids else row)
    covered = {key_of(r) for r in checks}
    for (experiment, *key), ids in sorted(left_out.items(), key=lambda kv: str(kv[0])):
        if (experiment, *key) not in covered:
            out.append(_row(tuple(key), "trajectory_diverged", f"every {experiment} seed", [], [], None,
                            f"no check: every trial of this trajectory diverged ({', '.join(sorted(ids))})"))
    return out
