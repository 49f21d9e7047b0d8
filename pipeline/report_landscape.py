"""report.md sections for the landscape step search and the Sec. 5 local-reduction vs convergence table."""

from __future__ import annotations

import math

from pipeline import figures as fig
from pipeline.labels import probe_sort_key
from pipeline.report_cells import Rows, markdown_table, trajectories, trajectory_heading
from pipeline.tables import group_rows, mean


def _finite_mean(values: list[object]) -> float | None:
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return mean(kept) if kept else None


def landscape_section(rows: Rows) -> list[str]:
    """Per trajectory: each probe's best loss reduction along its direction and the step reaching it."""
    out = ["## Best local loss reduction per direction (paper Figs. 2-4, step search)", "",
           "For each probe the step s along v/||v|| (parameter-space distance) was searched as the paper does: "
           "grown geometrically until the loss on the measurement batch rose again (`rise at`), then refined "
           "inside that bracket. `reduction` is the loss at s = 0 minus the lowest loss found (negative: no "
           "step lowered the loss), `best s` the step reaching it; means over seeds. `unbracketed` counts "
           "seeds whose loss still fell at the largest step tried (`tables/landscape_summary.parquet`).", ""]
    for key, group in trajectories(rows):
        body = []
        for (step, probe), cell in sorted(group_rows(group, ("step", "probe")).items(),
                                          key=lambda kv: (kv[0][0], probe_sort_key(kv[0][1]))):
            body.append([step, probe, _finite_mean([r["best_reduction"] for r in cell]),
                         _finite_mean([r["best_step"] for r in cell]), _finite_mean([r["rise_step"] for r in cell]),
                         sum(1 for r in cell if not r["bracketed"])])
        header = ["step", "probe", "reduction", "best s", "rise at", "unbracketed"]
        out += [trajectory_heading(key), "", markdown_table(header, body), ""]
    return out


def local_vs_convergence_section(rows: Rows) -> list[str]:
    """Sec. 5's link, per workload and trajectory: the two rankings side by side and their correlation."""
    out = ["## Local reduction and convergence speed (paper Sec. 5)", "",
           "The paper finds that directions with a better local loss reduction (in the SGD geometry) belong to "
           "algorithms that converge faster. Per trajectory, probes are ranked by their best local reduction "
           "(mean over seeds and measurement points after step 0; 1 = largest) and, where the sweep trained the "
           "same optimizer, by its final loss at its best lr (1 = lowest). `rank corr` is Spearman's rho "
           "between the two rankings over the probes that have both (positive: the link holds; `-` below three "
           "such probes) (`tables/local_vs_convergence.parquet`).", ""]
    for key, group in trajectories(rows):
        body = [[r["probe"], r["best_reduction_mean"], r["reduction_rank"], r["final_loss_mean"],
                 fig.lr_text(r["convergence_lr"]) if r["final_loss_mean"] is not None else None,
                 r["convergence_rank"]]
                for r in sorted(group, key=lambda r: r["reduction_rank"])]
        corr = group[0]["rank_correlation"]
        corr_text = "-" if corr is None else f"{corr:.2f}"
        heading = trajectory_heading(key) + f": rank corr {corr_text} over {group[0]['n_ranked']} probes"
        out += [heading, "",
                markdown_table(["probe", "reduction", "rank", "final loss", "at lr", "rank"], body), ""]
    return out
