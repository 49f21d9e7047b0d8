"""Paper Sec. 5: does a better local loss reduction along an algorithm's direction go with faster convergence?

Pan & Li 2023 (arXiv 2306.00204), Sec. 5 and Fig. 6: "algorithms with better directional
sharpness and better local loss reduction in the update direction in the SGD geometry generally
converge faster". Per sweep, workload and sharpness trajectory, each probe's best loss reduction
from the step search (landscape_summary, mean over seeds and measurement points) is ranked
(1 = largest reduction) beside the rank of the same optimizer's convergence run (convergence_summary
at its best lr; 1 = lowest final loss, i.e. fastest over the same number of steps). The Spearman
correlation of the two ranks over the probes that have both says whether the link holds here
(positive: it does).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from pipeline.labels import TRAJECTORY_KEY, optimizer_label
from pipeline.tables import group_rows, identity, key_order, mean

Row = Mapping[str, object]


def local_vs_convergence(summary: Iterable[Row], convergence: Iterable[Row]) -> list[dict[str, object]]:
    """Rows of pipeline.schemas.LOCAL_VS_CONVERGENCE from landscape_summary trial rows and
    convergence_summary rows. Step 0 is left out when later points exist (there Adam, Lion and
    signSGD coincide); non-finite reductions (zero directions) are ignored."""
    runs: dict[tuple, list[Row]] = {}
    for r in convergence:
        label = optimizer_label(r["algorithm"], r["clip_fraction"], r["clip_target"])
        runs.setdefault((r["sweep"], r["workload"], label), []).append(r)
    out = []
    for _key, group in sorted(group_rows(summary, TRAJECTORY_KEY).items(), key=lambda kv: key_order(kv[0])):
        ident = identity(group[0], TRAJECTORY_KEY)
        sweep, workload = ident["sweep"], ident["workload"]
        later = [r for r in group if r["step"] > 0] or list(group)
        by_probe = {p: [float(r["best_reduction"]) for r in rows if math.isfinite(float(r["best_reduction"]))]
                    for (p,), rows in group_rows(later, ("probe",)).items()}
        reductions = {p: (mean(v), len(v)) for p, v in by_probe.items() if v}
        reduction_rank = _ranks({p: -m for p, (m, _) in reductions.items()})
        matched = {p: run for p in reductions
                   if (run := _convergence_run(runs.get((sweep, workload, p), []), ident["label"])) is not None}
        finals = {p: float(r["final_loss_mean"]) for p, r in matched.items()
                  if r["final_loss_mean"] is not None and math.isfinite(float(r["final_loss_mean"]))}
        convergence_rank = _ranks(finals)
        # Both rankings over the same probes: the reduction ranks re-ranked among those with a convergence
        # run (global ranks of a subset are no permutation, and rho would leave [-1, 1]).
        shared_rank = _ranks({p: reduction_rank[p] for p in finals})
        correlation = _spearman([shared_rank[p] for p in finals], [convergence_rank[p] for p in finals])
        trajectory = optimizer_label(ident["algorithm"], ident["clip_fraction"], ident["clip_target"])
        for probe, (m, n) in sorted(reductions.items(), key=lambda kv: reduction_rank[kv[0]]):
            run = matched.get(probe)
            out.append({
                **ident, "trajectory": trajectory, "probe": probe,
                "n_points": n, "best_reduction_mean": m, "reduction_rank": reduction_rank[probe],
                "convergence_lr": None if run is None else run["best_lr"],
                "final_loss_mean": finals.get(probe), "convergence_rank": convergence_rank.get(probe),
                "n_ranked": len(finals), "rank_correlation": correlation,
            })
    return out


def _convergence_run(candidates: list[Row], label: str | None) -> Row | None:
    """The convergence setting of a probe's optimizer: the only one, else the one from the
    trajectory's own block label; several blocks (labels, hparams) and none of ours: not ranked,
    which one is meant is not ours to guess."""
    if len(candidates) == 1:
        return candidates[0]
    own = [r for r in candidates if r.get("label") == label]
    return own[0] if len(own) == 1 else None


def _ranks(values: Mapping[str, float]) -> dict[str, int]:
    """1 for the smallest value; ties broken by name, so ranks are a permutation."""
    ordered = sorted(values, key=lambda k: (values[k], k))
    return {k: i + 1 for i, k in enumerate(ordered)}


def _spearman(a: list[int], b: list[int]) -> float | None:
    """Spearman's rho of two rankings without ties; None below three pairs (too few to say)."""
    n = len(a)
    if n < 3:
        return None
    return 1 - 6 * math.fsum((x - y) ** 2 for x, y in zip(a, b)) / (n * (n * n - 1))
