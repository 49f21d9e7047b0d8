"""report.md sections on the sharpness family: the paper's claims, the ratio to SGD, the top-k share, the
Gauss-Newton smoothness and the curvature beside it."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from pathlib import Path

from pipeline import figures as fig
from pipeline.accounting import seed_counts_note
from pipeline.labels import TRAJECTORY_KEY, optimizer_label, probe_sort_key, setting_text
from pipeline.orderings import CONTROL_MARGIN, PAPER_MAX_FRACTION, PAPER_MIN_RATIO, VERDICTS, median_ratios
from pipeline.paper_values import load_paper_values, sharpness_ratios, smoothness_rows
from pipeline.report_cells import (
    Rows, count, drop_setting, image_lines, markdown_table, setting_cell, trajectories, trajectory_heading,
)
from pipeline.schemas import DIVERGED
from pipeline.tables import group_rows, key_order, mean


_CLAIMS = {
    "adaptive_flatter_than_sgd": "adaptive flatter than SGD",
    "clipping_lowers_sharpness": "clipping lowers sharpness",
    "few_coordinates_carry_bad_smoothness": "few coordinates carry the bad smoothness",
}


def orderings_section(rows: Rows, diverged: Rows) -> list[str]:
    out = ["## The paper's claims, per workload", "",
           "Each row tests one of the paper's claims for one probe along one training trajectory, at every "
           "measurement point (seed means; step 0 left out when later points exist) and, for the paper, at every "
           "epoch it published (`pipeline/paper_values.csv`; `source` names the table). `ours` and `paper` are "
           "the medians of the quantity in `detail` over the decided points, with their log10 (the paper's claim "
           "is about orders of magnitude). A point where either sharpness is negative after the robust step is "
           "undecided: counted, never held. `held at` is the share of decided points where the claim held, for "
           "us and for the paper; a side holds on a majority. The verdict says whether the paper's finding held "
           "here: held / did not hold / undecided (no majority of ours) / the paper has no value (it published "
           "nothing for this probe, trajectory or workload). Smoothness holds where L/ell >= "
           f"{PAPER_MIN_RATIO:g} with at most {PAPER_MAX_FRACTION:.0%} removed and the outliers' removal beats "
           f"removing as many random coordinates by {CONTROL_MARGIN:g}x (`control`: median L/ell_random). "
           "At laptop scale these are small models trained for a few hundred steps: read disagreements as "
           "findings at this scale, not as failures of the tool (`tables/orderings.parquet`).", ""]
    left_out = sorted(r["trial_id"] for r in diverged if r["experiment"] in ("sharpness", "smoothness"))
    if left_out:
        out += [f"Left out of these checks: {len(left_out)} diverged trial(s) ({', '.join(left_out)}); "
                "`detail` in the table names them per row.", ""]
    header = ["claim", "trajectory", "lr", "setting", "subject", "points", "undecided", "ours", "log10 ours",
              "control", "paper", "log10 paper", "source", "held at", "paper held at", "verdict"]
    for (workload,), group in sorted(group_rows(rows, ("workload",)).items()):
        body = [[_CLAIMS.get(r["claim"], r["claim"]), r["trajectory"], fig.lr_text(r["lr"]), setting_cell(r),
                 r["subject"], r["n_points"], r["n_undecided"], r["measured"], r["measured_log10"], r["control"],
                 r["paper_value"], r["paper_log10"], r["paper_source"], r["fraction_holding"],
                 r["paper_fraction_holding"], r["verdict"]]
                for r in group]
        counts = count([r["verdict"] for r in group])
        summary = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts.get(v))
        out += [f"### {workload}: {summary}", "", markdown_table(*drop_setting(header, body)), ""]
    return out


def glance_section(rows: Rows) -> list[str]:
    out = ["## Sharpness ratio to SGD at a glance", "",
           "Per workload, the median over decided measurement points (step 0 left out when later points "
           "exist; a point with a negative sharpness is left out) of each probe's seed-mean directional "
           "sharpness divided by SGD's, our ratio (`ratio_to_sgd`: robust-or-raw over robust-or-raw); one "
           "table per training trajectory. Below 1: a flatter direction than SGD's. `paper` columns: the "
           "median over the epochs the paper published of its positive ratios for the same probe, trajectory "
           "and workload (its table named in the column; `-`: none published, or all negative). The full "
           "tables per step and seed follow.", ""]
    medians = median_ratios(rows)
    published = load_paper_values()
    for (trajectory,), group in sorted(group_rows(rows, ("trajectory",)).items()):
        # One column per trajectory of this optimizer: workload, and lr / label / hparams where they vary.
        keys = sorted({tuple(r[k] for k in TRAJECTORY_KEY) for r in group}, key=key_order)
        columns = [dict(zip(TRAJECTORY_KEY, k)) for k in keys]
        several = {c["workload"] for c in columns if sum(1 for d in columns if d["workload"] == c["workload"]) > 1}
        header = ["probe"] + [" ".join([c["workload"], f"lr {fig.lr_text(c['lr'])}", setting_text(c)]).strip()
                              if c["workload"] in several else c["workload"] for c in columns]
        papers = {w: sharpness_ratios(published, w, trajectory) for w in sorted({c["workload"] for c in columns})}
        seeds = {name: len({r["seed"] for r in group if tuple(r[c] for c in TRAJECTORY_KEY) == k
                            and r["status"] != DIVERGED}) for name, k in zip(header[1:], keys)}
        header += [f"paper {w} ({source})" if source else f"paper {w}" for w, (source, _) in papers.items()]
        probes = sorted({r["probe"] for r in group}, key=probe_sort_key)
        body = [[p, *[medians.get((*k, p)) for k in keys],
                 *[_published_median(series.get(p)) for _, series in papers.values()]] for p in probes]
        lrs = ", ".join(f"{c['workload']} {fig.lr_text(c['lr'])}" for c in columns)
        out += [f"### trajectory {trajectory} (lr: {lrs})", "", markdown_table(header, body), ""]
        note = seed_counts_note(seeds)
        out += [f"Note: {note}.", ""] if note else []
    return out


def _published_median(by_epoch: Mapping[int, float] | None) -> float | None:
    # A negative published ratio is undecided, as ours are: the median is over the positive ones.
    decided = [v for v in (by_epoch or {}).values() if v > 0]
    return statistics.median(decided) if decided else None


_LISTED = 8  # points named where the robust value is negative; the rest are counted


def negative_robust(sharpness: Rows) -> list[str]:
    """Say where the robust value is itself negative: Eq. 4 does not guarantee a positive one."""
    robust = [r for r in sharpness if r["robust"]]
    still = sorted({(r["workload"], optimizer_label(r["algorithm"], r["clip_fraction"], r["clip_target"]),
                     r["step"], r["probe"]) for r in robust if float(r["sharpness"]) < 0})
    if not robust:
        return ["No raw sharpness was negative: every value is the raw one.", ""]
    line = f"{len(robust)} measured values were negative and replaced by the robust value; "
    if not still:
        return [line + "every robust value is positive.", ""]
    where = "; ".join(f"{w} trajectory {t} step {s} {p}" for w, t, s, p in still[:_LISTED])
    more = f"; and {len(still) - _LISTED} more" if len(still) > _LISTED else ""
    return [line + f"the robust value is itself negative at {len(still)} point(s) ({where}{more}; "
            "`tables/sharpness.parquet`: `robust` and `sharpness` < 0): those ratios are undecided.", ""]


def sharpness_section(rows: Rows, figures: Mapping[str, Path], sharpness: Rows) -> list[str]:
    out = ["## Directional sharpness ratio to SGD (paper Tables 1, 4-7; Figs. 1-3)", "",
           "Each seed's cell is our ratio: the directional sharpness v^T H v / ||v||^2 of one probe's update "
           "(the robust value at x + 0.01 v/||v|| when the raw one is negative), divided by that of the SGD "
           "probe (likewise) at the same step, on the fixed measurement batch (training examples unless the "
           "sharpness table's `measure_batch` says `test`), along the trajectory of the training "
           "optimizer named in the heading; `mean` is their mean over seeds. `paper ratio` is the mean over "
           "seeds of the paper's ratio: raw over raw, with the shifted Hessian (Eq. 4) for every direction only "
           "where SGD's own raw value is negative (App. B.3), signs kept, as its Tables 4-7 print them. "
           "`undecided`: seeds where the probe's or SGD's sharpness is negative even after the robust step. "
           "Below 1 means a flatter direction than SGD's; the paper finds adaptive and clipped updates far "
           "below 1 on transformers (`tables/table1_sharpness_ratio.parquet`). The figures show the ratio over "
           "steps, the loss along each probe's direction (landscape) and the distribution of update "
           "coordinates.", ""]
    out += negative_robust(sharpness)
    for key, group in trajectories(rows):
        seeds = sorted({r["seed"] for r in group})
        gone = {r["seed"] for r in group if r["status"] == DIVERGED}
        cells = {(r["step"], r["probe"], r["seed"]): r["ratio_to_sgd"] for r in group}
        means = {(r["step"], r["probe"]): (r["ratio_mean"], r.get("ratio_paper_mean"), r.get("n_undecided"))
                 for r in group}
        body = [[step, probe, *[cells.get((step, probe, s)) for s in seeds], *means[(step, probe)]]
                for step, probe in sorted(means)]
        columns = [f"seed {s}" + (" (diverged)" if s in gone else "") for s in seeds]
        header = ["step", "probe", *columns, "mean", "paper ratio", "undecided"]
        out += [trajectory_heading(key), "", markdown_table(header, body), ""]
        for kind in ("sharpness_ratio", "landscape", "histogram"):
            out += image_lines(fig.trajectory_stem(kind, key), figures)
    return out


def topk_section(rows: Rows) -> list[str]:
    out = ["## The share of SGD's sharpness carried by its top coordinates (paper Secs. 3.2, 4.1)", "",
           "At each measurement point, SGD's update with its top-k fraction of coordinates (by |v_i|) zeroed: "
           "`masked` is the directional sharpness of what is left, `share` = 1 - v_rest^T H v_rest / v^T H v "
           "the part of the second-order term the top coordinates carry (cross terms included), `norm share` "
           "their share of ||v||^2. The paper's claim: a small fraction of coordinates carries most of SGD's "
           "sharpness (share near 1 at small k). Means over seeds (`tables/topk_share.parquet`).", ""]
    header = ["step", "k", "n masked", "sharpness", "masked", "share", "norm share"]
    for key, group in trajectories(rows):
        body = []
        for (step, k), point in sorted(group_rows(group, ("step", "topk_fraction")).items()):
            body.append([step, k, *[mean([float(r[c]) for r in point])
                                    for c in ("n_masked", "sharpness", "sharpness_masked", "sharpness_share",
                                              "norm_share")]])
        for line in body:
            line[2] = round(line[2])
        out += [trajectory_heading(key), "", markdown_table(header, body), ""]
    return out


def _smoothness_order(r: dict[str, object]) -> tuple:
    return key_order([r[k] for k in ("trajectory", "label", "hparams", "lr", "outlier_factor", "step")])


def smoothness_section(rows: Rows, figures: Mapping[str, Path]) -> list[str]:
    out = ["## Gauss-Newton smoothness (paper Table 8, App. D)", "",
           "L is the spectral norm of the Gauss-Newton Hessian of the binary classifier over the coordinates "
           "`params` names (`attention`: the attention weight matrices, as the authors' code; `all`: every "
           "parameter); ell is the same norm after removing the coordinates whose row norm is at least "
           "`factor` x the mean row norm, and eps the fraction of coordinates removed. ell <= L always "
           "(removing coordinates takes a principal sub-block), so the control matters: L/ell random is L "
           "over the norm after removing as many coordinates drawn at random (`seed`). A few coordinates "
           "carry the bad smoothness where L/ell is large, eps tiny and L/ell random near 1. L and ell are "
           "divided by the number of samples n (the mean GN Hessian); the authors' code does not divide, so "
           "their L and ell are n times ours (L/ell and eps are the same). Means over seeds; L/ell is the "
           "mean of each seed's ratio. The paper's Table 8 (pretrained BERT on IMDB, epochs) follows each "
           "workload's table where it applies. Seeds whose trial diverged are left out (`diverged`).", ""]
    header = ["trajectory", "lr", "setting", "params", "factor", "seed", "step", "seeds", "diverged", "L", "ell",
              "L/ell", "eps", "L/ell random"]
    published = load_paper_values()
    for (workload,), group in sorted(group_rows(rows, ("workload",)).items()):
        body = [[r["trajectory"], fig.lr_text(r["lr"]), setting_cell(r), r.get("gn_params"), r["outlier_factor"],
                 r.get("control_seed"), r["step"], r["n_seeds"], r.get("n_diverged"), r["L"], r["ell"], r["ratio"],
                 r["fraction_removed"], r.get("ratio_random")]
                for r in sorted(group, key=_smoothness_order)]
        out += [f"### {workload}", "", markdown_table(*drop_setting(header, body)), ""]
        for trajectory in sorted({r["trajectory"] for r in group}):
            source, paper = smoothness_rows(published, workload, trajectory)
            if source:
                rows8 = [[e, v.get("L"), v.get("ell"), v.get("ratio"), v.get("fraction_removed")]
                         for e, v in sorted(paper.items())]
                out += [f"The paper's {source} (trajectory {trajectory}; L and ell not divided by n):", "",
                        markdown_table(["epoch", "L", "ell", "L/ell", "eps"], rows8), ""]
        out += image_lines(fig.figure_stem("smoothness", workload), figures)
    return out


def curvature_section(every: Rows, figures: Mapping[str, Path]) -> list[str]:
    rows = [r for r in every if r["status"] != DIVERGED]
    left_out = sorted({r["trial_id"] for r in every if r["status"] == DIVERGED})
    out = ["## Curvature beside directional sharpness (beyond the paper, Sec. 4.2 conjecture)", "",
           "lambda_max is the top Hessian eigenvalue (Lanczos) on the test batch; rank corr is the "
           "Spearman correlation between |g_i| and the Hutchinson estimate of |H_ii| over all "
           "coordinates and over the top-k fraction by |g|; `H stderr` is the Hutchinson estimate's "
           "||standard error|| / ||estimate|| (above ~0.3 the |H_ii| ranks are mostly sampling noise: read the "
           "correlations against it). The probe columns give each probe's raw "
           "directional sharpness divided by lambda_max (at most 1: sharpness along one direction "
           "cannot exceed the top eigenvalue). Means over seeds"
           + (f"; left out: {len(left_out)} diverged trial(s) ({', '.join(left_out)})." if left_out else "."), ""]
    for key, group in trajectories(rows):
        probes = sorted({r["probe"] for r in group if r["probe"] is not None})
        body = []
        for (step,), sr in sorted(group_rows(group, ("step",)).items()):
            points = list({r["trial_id"]: r for r in sr}.values())
            ratios = []
            for p in probes:
                vals = [r["sharpness_to_top_eigenvalue"] for r in sr if r["probe"] == p]
                vals = [v for v in vals if v is not None]
                ratios.append(mean(vals) if vals else None)
            converged = f"{sum(r['lanczos_converged'] for r in points)}/{len(points)}"
            noise = [r.get("hutchinson_rel_stderr") for r in points]
            noise = [v for v in noise if v is not None]
            body.append([step, mean([r["top_eigenvalue"] for r in points]), converged,
                         mean([r["rank_corr_all"] for r in points]), mean([r["rank_corr_topk"] for r in points]),
                         mean(noise) if noise else None, *ratios])
        header = ["step", "lambda_max", "converged", "rank corr", "rank corr top-k", "H stderr", *probes]
        out += [trajectory_heading(key), "", markdown_table(header, body), ""]
        out += image_lines(fig.trajectory_stem("curvature", key), figures)
    return out
