"""The paper's qualitative claims, checked per workload against a sweep's aggregate tables.

Pan & Li 2023 (arXiv 2306.00204) make three claims that our tables can test:

- Sec. 3, Tables 1 and 4-7: on transformers the adaptive algorithms' update directions are far
  flatter than SGD's (directional sharpness ratio to SGD below 1; App. E's ResNet Table 9 finds
  it for Lion and signSGD only).
- Sec. 4, Tables 1 and 4-7: coordinate-wise clipping lowers each algorithm's directional
  sharpness (clipped probe below its unclipped twin).
- App. D, Table 8: a few coordinates carry the bad smoothness: removing at most a few percent
  (the outliers of the Gauss-Newton row norms) improves the smoothness L / ell by the factor the
  paper reports, far more than removing as many coordinates at random.

What the paper expects is not assumed: it is derived from its published values
(pipeline/paper_values.csv) per probe, trajectory and workload, by the same rule as ours, and is
null ("the paper has no value") where it published nothing for that probe, trajectory or
workload. Each claim is tested at every measurement point (mean over seeds; step 0 left out when
later points exist: there every probe has seen one gradient and Adam, Lion and signSGD coincide)
and at every epoch the paper published. A point where either sharpness is negative (after the
robust step) is undecided: counted and shown, never "held". A side (ours or the paper's) holds
where the claim held at a majority of its decided points; an even split or no decided point is
undecided. The verdict says whether the paper's finding held in our measurement: held / did not
hold / undecided / the paper has no value. Trials that diverged are left out (their points are
not in the seed means), and each row says so.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence

from pipeline.labels import ADAPTIVE_PROBES, TRAJECTORY_KEY, optimizer_label, parse_label
from pipeline.paper_values import PaperValue, load_paper_values, sharpness_ratios, smoothness_rows
from pipeline.schemas import DIVERGED
from pipeline.tables import group_rows

Row = Mapping[str, object]

# App. D: "removing <= 4% of the coordinates" (Sec. 4.2) improves the smoothness "by a constant
# factor", 2 to 3 times (Table 8: L/ell 2.12-3.21 with eps 1.1%-3.2%).
PAPER_MIN_RATIO = 2.0
PAPER_MAX_FRACTION = 0.04
# The control (the authors' check_sol): removing the outliers must lower the norm at least this
# factor more than removing as many random coordinates (ell_random / ell), or the claim fails.
CONTROL_MARGIN = 1.5

VERDICTS = ("held", "did not hold", "undecided", "the paper has no value")
_TRAJ = TRAJECTORY_KEY  # one training trajectory (block label and hparams included)
_N = len(_TRAJ)


def _series(table1: Iterable[Row]) -> dict[tuple, dict[str, dict[int, float | None]]]:
    """Trajectory key -> probe -> step -> seed-mean ratio to SGD, None where the point is
    undecided (a negative sharpness at some seed); step 0 dropped when later steps exist."""
    out = {}
    for key, group in group_rows(table1, _TRAJ).items():
        unique = {}
        for r in group:
            if r["ratio_mean"] is None:
                continue
            undecided = bool(r.get("n_undecided")) or not float(r["ratio_mean"]) > 0
            unique[(r["step"], r["probe"])] = None if undecided else float(r["ratio_mean"])
        later = {k: v for k, v in unique.items() if k[0] > 0}
        series: dict[str, dict[int, float | None]] = {}
        for (step, probe), ratio in sorted((later or unique).items()):
            series.setdefault(probe, {})[step] = ratio
        out[key] = series
    return out


def _decided(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v)) and float(v) > 0]


def _side(values: Sequence[float | None], test) -> tuple[list[float], float | None, bool | None]:
    """(decided values, fraction of them where `test` held, majority: None on a tie or none).

    `test(index, value)`: whether the claim held at that decided point.
    """
    decided = [(i, float(v)) for i, v in enumerate(values)
               if v is not None and math.isfinite(float(v)) and float(v) > 0]
    if not decided:
        return [], None, None
    fraction = sum(bool(test(i, v)) for i, v in decided) / len(decided)
    return [v for _, v in decided], fraction, None if fraction == 0.5 else fraction > 0.5


def _log10(value: float | None) -> float | None:
    return math.log10(value) if value is not None and value > 0 and math.isfinite(value) else None


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def verdict(holds: bool | None, paper: bool | None) -> str:
    """Whether the paper's finding held in our measurement."""
    if paper is None:
        return "the paper has no value"
    if holds is None:
        return "undecided"
    return "held" if holds == paper else "did not hold"


def _trajectory(key: tuple) -> str:
    k = dict(zip(_TRAJ, key))
    return optimizer_label(k["algorithm"], k["clip_fraction"], k["clip_target"])


def _row(key: tuple, claim: str, subject: str, ours: Sequence[float | None], paper: Sequence[float | None],
         test, source: str | None, detail: str, control: float | None = None,
         paper_test=None) -> dict[str, object]:
    ident = dict(zip(_TRAJ, key))
    decided, fraction, holds = _side(ours, test)
    paper_decided, paper_fraction, paper_holds = _side(paper, paper_test or test)
    measured, paper_value = _median(decided), _median(paper_decided)
    if source is None:
        paper_holds = paper_fraction = paper_value = None
    elif paper and not paper_decided:
        detail += "; every published point here is undecided (a negative ratio): no value to compare with"
    return {
        **ident, "claim": claim, "trajectory": _trajectory(key), "subject": subject,
        "n_points": len(ours), "n_undecided": len(ours) - len(decided),
        "measured": measured, "measured_log10": _log10(measured), "control": control,
        "fraction_holding": fraction, "holds": holds,
        "paper_value": paper_value, "paper_log10": _log10(paper_value),
        "paper_points": len(paper) if source else 0, "paper_fraction_holding": paper_fraction,
        "paper": paper_holds, "paper_source": source,
        "agrees": None if holds is None or paper_holds is None else holds == paper_holds,
        "verdict": verdict(holds, paper_holds), "detail": detail,
    }


def _clipped_twin(label: str, labels: Iterable[str]) -> str | None:
    """The unclipped probe a clipped one is compared with: adam_clipupdate0.5 -> adam."""
    try:
        algorithm, fraction, _ = parse_label(label)
    except ValueError:  # a config's own probe label, not an optimizer label: no twin
        return None
    return algorithm if fraction != 0 and algorithm in set(labels) else None


def _paper_probe(label: str, published: Mapping[str, object]) -> str | None:
    """The published row for our probe: the same label, else the same algorithm and clip target
    at the paper's own clip fraction (e.g. the ResNet's adam_clip0.1 for our adam_clip0.5)."""
    if label in published:
        return label
    try:
        algorithm, fraction, target = parse_label(label)
    except ValueError:
        return None
    for row in sorted(published):
        try:
            a, f, t = parse_label(row)
        except ValueError:
            continue
        if (a, t) == (algorithm, target) and (f == 0) == (fraction == 0):
            return row
    return None


def median_ratios(table1: Iterable[Row]) -> dict[tuple, float]:
    """(*TRAJECTORY_KEY, probe) -> median over the decided measurement points (step
    0 left out when later ones exist) of the seed-mean sharpness ratio to SGD: the report's glance."""
    return {(*key, probe): statistics.median(values)
            for key, series in _series(table1).items() for probe, by_step in series.items()
            if (values := _decided(by_step.values()))}


def _below_one(index: int, value: float) -> bool:
    return value < 1


def sharpness_orderings(table1: Iterable[Row], published: Sequence[PaperValue] | None = None) -> list[dict]:
    """Claims 1 and 2 from paper Table 1's layout (pipeline.tables.table1_sharpness_ratio rows)."""
    published = load_paper_values() if published is None else published
    out = []
    for key, series in sorted(_series(table1).items(), key=lambda kv: str(kv[0])):
        source, paper = sharpness_ratios(published, dict(zip(_TRAJ, key))["workload"], _trajectory(key))
        for probe in (p for p in ADAPTIVE_PROBES if p in series):
            row = _paper_probe(probe, paper)
            ours = list(series[probe].values())
            shown = source if row else None
            out.append(_row(key, "adaptive_flatter_than_sgd", probe, ours,
                            list(paper[row].values()) if row else [], _below_one, shown,
                            "sharpness ratio to SGD (median of decided points); holds where < 1"))
        for probe in sorted(series):
            twin = _clipped_twin(probe, series)
            if twin is None:
                continue
            base = series[twin]
            steps = sorted(set(series[probe]) & set(base))
            ours = [_quotient(series[probe][s], base[s]) for s in steps]
            row, paper_twin = _paper_probe(probe, paper), _paper_probe(twin, paper)
            theirs = []
            if row and paper_twin:
                epochs = sorted(set(paper[row]) & set(paper[paper_twin]))
                theirs = [_quotient(paper[row][e], paper[paper_twin][e]) for e in epochs]
            note = f" (the paper's row: {row})" if row and row != probe else ""
            out.append(_row(key, "clipping_lowers_sharpness", f"{probe} vs {twin}", ours, theirs, _below_one,
                            source if theirs else None,
                            "sharpness ratio clipped / unclipped (median of decided points); holds where < 1"
                            + note))
    return out


def _quotient(a: float | None, b: float | None) -> float | None:
    # Undecided where either point is (a negative sharpness): never read off a signed quotient.
    if a is None or b is None or not (a > 0 and b > 0):
        return None
    return a / b


def smoothness_orderings(table8: Iterable[Row], published: Sequence[PaperValue] | None = None) -> list[dict]:
    """Claim 3 from paper Table 8's layout (pipeline.tables.table8_smoothness rows).

    A point holds where L/ell >= PAPER_MIN_RATIO, eps <= PAPER_MAX_FRACTION and ell_random / ell
    >= CONTROL_MARGIN. The paper published no random control, so its side tests the first two.
    """
    published = load_paper_values() if published is None else published
    out = []
    keys = _TRAJ + ("outlier_factor", "gn_params", "control_seed")
    for key, group in sorted(group_rows(table8, keys).items(), key=lambda kv: str(kv[0])):
        later = [r for r in group if r["step"] > 0] or group
        ours = [float(r["ratio"]) for r in later]  # a non-finite ratio (ell = 0) is undecided
        extra = [float(r["fraction_removed"]) <= PAPER_MAX_FRACTION
                 and float(r["ell_random"]) >= CONTROL_MARGIN * float(r["ell"]) for r in later]
        source, paper = smoothness_rows(published, dict(zip(_TRAJ, key))["workload"], _trajectory(key))
        theirs = [p["ratio"] for p in paper.values()]
        paper_eps = [p["fraction_removed"] <= PAPER_MAX_FRACTION for p in paper.values()]
        eps = max(float(r["fraction_removed"]) for r in later)
        out.append(_row(
            key[:_N], "few_coordinates_carry_bad_smoothness", f"factor {key[_N]:g}, {key[_N + 1]}", ours, theirs,
            lambda i, v, extra=extra: v >= PAPER_MIN_RATIO and extra[i], source,
            f"L/ell (median of decided points; max eps {eps:.2%}); holds where L/ell >= {PAPER_MIN_RATIO:g}, "
            f"eps <= {PAPER_MAX_FRACTION:.0%} and ell_random/ell >= {CONTROL_MARGIN:g} (control: as many "
            f"coordinates removed at random, seed {key[_N + 2]}; `control` is its median L/ell_random; the paper "
            "published no control)",
            control=_median(_decided(float(r["ratio_random"]) for r in later)),
            paper_test=lambda i, v, eps_ok=paper_eps: v >= PAPER_MIN_RATIO and eps_ok[i]))
    return out


def paper_orderings(table1: Iterable[Row], table8: Iterable[Row],
                    published: Sequence[PaperValue] | None = None) -> list[dict[str, object]]:
    """All three claims, per workload (rows of pipeline.schemas.ORDERINGS)."""
    published = load_paper_values() if published is None else published
    return sharpness_orderings(table1, published) + smoothness_orderings(table8, published)


def note_diverged(checks: list[dict[str, object]], trials: Iterable[Row]) -> list[dict[str, object]]:
    """The checks with the diverged trials (rows of the `trials` table) that they leave out named in
    `detail`; a trajectory whose every trial diverged gets one row that says it was left out."""
    left_out: dict[tuple, list[str]] = {}
    for t in trials:
        if t.get("status") == DIVERGED and t["experiment"] in ("sharpness", "smoothness"):
            key = (t["experiment"], *(t[k] for k in _TRAJ))
            left_out.setdefault(key, []).append(str(t["trial_id"]))
    def key_of(row: Row) -> tuple:
        experiment = "smoothness" if row["claim"] == "few_coordinates_carry_bad_smoothness" else "sharpness"
        return (experiment, *(row[k] for k in _TRAJ))

    out = []
    for row in checks:
        ids = left_out.get(key_of(row))
        out.append({**row, "detail": f"{row['detail']}; left out: {len(ids)} diverged trial(s) "
                    f"({', '.join(sorted(ids))})"} if ids else row)
    covered = {key_of(r) for r in checks}
    for (experiment, *key), ids in sorted(left_out.items(), key=lambda kv: str(kv[0])):
        if (experiment, *key) not in covered:
            out.append(_row(tuple(key), "trajectory_diverged", f"every {experiment} seed", [], [], None, None,
                            f"no check: every trial of this trajectory diverged ({', '.join(sorted(ids))})"))
    return out
