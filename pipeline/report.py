"""report.md for a sweep: the aggregate tables rendered as markdown, what each means, and the figures."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pyarrow as pa

from pipeline import figures as fig
from pipeline.accounting import (
    STATES, TrialStates, accounting_rows, seed_counts_note, summary_line, table3_notes, trial_states,
)
from pipeline.atomic import atomic_write_bytes
from pipeline.labels import TRAJECTORY_KEY, optimizer_label, probe_sort_key, setting_text
from pipeline.layout import ResultsLayout
from pipeline.orderings import CONTROL_MARGIN, PAPER_MAX_FRACTION, PAPER_MIN_RATIO, VERDICTS, median_ratios
from pipeline.paper_values import (
    load_paper_values, published_sharpness_markers, sharpness_ratios, smoothness_rows,
)
from pipeline.provenance import provenance_section
from pipeline.report_html import write_html
from pipeline.report_landscape import landscape_section, local_vs_convergence_section
from pipeline.schemas import DIVERGED
from pipeline.tables import FINAL_WINDOW, group_rows, key_order, mean

Rows = list[dict[str, object]]

# One line per table file, in the order report.md lists them.
TABLE_NOTES = {
    "sharpness": "tidy: per trial, measurement step and probe: directional sharpness (robust value when the raw "
    "one is negative), ratio to SGD (ours, and the paper's: raw over raw, Eq. 4 only where SGD is negative), "
    "gradient correlation, update norm, clip threshold tau, share of zero gradient coordinates, and the "
    "measurement batch (split, size, sub-batch size)",
    "topk_share": "tidy: per trial and measurement step, SGD's sharpness with its top-k coordinates masked and "
    "the share of its sharpness they carry (paper Secs. 3.2, 4.1)",
    "landscape": "tidy: loss on the fixed measurement batch at x + s v/||v|| along each probe's update, on a grid",
    "landscape_summary": "tidy: per probe, the searched step s with the best loss reduction, that reduction, the "
    "step where the loss rises again, the search's resolution (paper Figs. 2-4)",
    "histogram": "tidy: histogram of log10 |v_i| per probe, the paper's 30 bins from 1e-15 to 10 (or relative to "
    "max |v| where `scale` says so), out-of-range counts in open-ended rows (paper Fig. 1)",
    "convergence": "tidy: train loss per step, test loss where evaluated (paper Fig. 6)",
    "convergence_summary": "per setting (workload, block label, algorithm, clip, hparams): best lr, final loss "
    "mean/std over seeds, speed-up from clipping",
    "smoothness": "tidy: Gauss-Newton L, ell, L/ell, eps per measurement point over the `gn_params` coordinates, "
    "beside the random-removal control (paper App. D)",
    "curvature": "top Hessian eigenvalue and |g|-vs-|H_ii| rank correlations, beside each probe's directional "
    "sharpness",
    "table1_sharpness_ratio": "paper Tables 1, 4-7 layout: step x probe x seed sharpness ratio to SGD with the "
    "mean over seeds",
    "table3_convergence": "paper Table 3 layout: per algorithm, unclipped vs clipped best lr, final loss, speed-up",
    "table8_smoothness": "paper Table 8 layout: L, ell, L/ell, eps and the random control per measurement point, "
    "mean over seeds",
    "orderings": "the paper's claims checked per workload, trajectory and probe: ours and the paper's published "
    "values side by side, with the verdict",
    "local_vs_convergence": "paper Sec. 5: per trajectory, each probe's rank by best local loss reduction beside "
    "its optimizer's rank by final loss in the convergence runs, and the rank correlation",
    "trials": "one row per completed trial: the node that ran it (Ray's node address), its wall time, its status "
    "(finished or diverged) and where it diverged",
}

_CLAIMS = {
    "adaptive_flatter_than_sgd": "adaptive flatter than SGD",
    "clipping_lowers_sharpness": "clipping lowers sharpness",
    "few_coordinates_carry_bad_smoothness": "few coordinates carry the bad smoothness",
}


def fmt(value: object) -> str:
    """A table cell: 4 significant digits for floats, '-' for null."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _trajectories(rows: Rows) -> list[tuple[tuple, Rows]]:
    groups = group_rows(rows, fig.TRAJECTORY)  # (label, workload, algorithm, clip..., hparams, lr)
    return sorted(groups.items(), key=lambda kv: key_order(kv[0]))


def _heading(key: Sequence[object]) -> str:
    k = dict(zip(fig.TRAJECTORY, key))
    suffix = setting_text(k)
    return (f"### {k['workload']}: trajectory {optimizer_label(k['algorithm'], k['clip_fraction'], k['clip_target'])}"
            f", lr {fig.lr_text(k['lr'])}" + (f" {suffix}" if suffix else ""))


def _setting(row: Mapping[str, object]) -> str:
    """A row's block label and hparams for a table cell ('-' for neither)."""
    return setting_text(row) or "-"


def _drop_setting(header: list[str], body: list[list[object]]) -> tuple[list[str], list[list[object]]]:
    """Without its "setting" column when no row has a block label or hparams (the usual sweep)."""
    i = header.index("setting")
    if any(row[i] != "-" for row in body):
        return header, body
    return header[:i] + header[i + 1:], [row[:i] + row[i + 1:] for row in body]


def _image(stem: str, figures: Mapping[str, Path]) -> list[str]:
    return [f"![{stem}](figures/{stem}.png)", ""] if stem in figures else []


def _accounting_section(states: TrialStates, tables: Mapping[str, pa.Table], diverged: Rows) -> list[str]:
    out = ["## Trials: planned, finished, diverged, failed, missing", "",
           "Per table, the planned trials of the experiments that feed it. Tables are built from the records of "
           "trials with a done mark only (finished or diverged); a failed trial's partial records and a missing "
           "trial count nowhere. A diverged trial (non-finite loss, or a loss above `divergence_factor` x its "
           "step-0 loss) stopped there: nothing was measured on its diverged weights.", "",
           markdown_table(["table", "planned", *STATES, "diverged trials' rows"], accounting_rows(states, tables)), ""]
    if diverged:
        out += [markdown_table(["diverged trial", "at step", "loss"],
                               [[r["trial_id"], r["diverged_step"], r["diverged_loss"]] for r in diverged]), ""]
    for state in ("failed", "missing"):
        ids = states.ids(state)
        if ids:
            out += [f"{state.capitalize()}: {', '.join(ids)}.", ""]
    return out


def _orderings_section(rows: Rows, diverged: Rows) -> list[str]:
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
        body = [[_CLAIMS.get(r["claim"], r["claim"]), r["trajectory"], fig.lr_text(r["lr"]), _setting(r), r["subject"],
                 r["n_points"], r["n_undecided"], r["measured"], r["measured_log10"], r["control"],
                 r["paper_value"], r["paper_log10"], r["paper_source"], r["fraction_holding"],
                 r["paper_fraction_holding"], r["verdict"]]
                for r in group]
        counts = _count([r["verdict"] for r in group])
        summary = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts.get(v))
        out += [f"### {workload}: {summary}", "", markdown_table(*_drop_setting(header, body)), ""]
    return out


def _glance_section(rows: Rows) -> list[str]:
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


def _negative_robust(sharpness: Rows) -> list[str]:
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


def _sharpness_section(rows: Rows, figures: Mapping[str, Path], sharpness: Rows) -> list[str]:
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
    out += _negative_robust(sharpness)
    for key, group in _trajectories(rows):
        seeds = sorted({r["seed"] for r in group})
        gone = {r["seed"] for r in group if r["status"] == DIVERGED}
        cells = {(r["step"], r["probe"], r["seed"]): r["ratio_to_sgd"] for r in group}
        means = {(r["step"], r["probe"]): (r["ratio_mean"], r.get("ratio_paper_mean"), r.get("n_undecided"))
                 for r in group}
        body = [[step, probe, *[cells.get((step, probe, s)) for s in seeds], *means[(step, probe)]]
                for step, probe in sorted(means)]
        columns = [f"seed {s}" + (" (diverged)" if s in gone else "") for s in seeds]
        header = ["step", "probe", *columns, "mean", "paper ratio", "undecided"]
        out += [_heading(key), "", markdown_table(header, body), ""]
        for kind in ("sharpness_ratio", "landscape", "histogram"):
            out += _image(fig.trajectory_stem(kind, key), figures)
    return out


def _convergence_section(rows: Rows, figures: Mapping[str, Path]) -> list[str]:
    out = ["## Convergence and the speed-up from clipping (paper Table 3, Fig. 6)", "",
           f"For each algorithm the best learning rate is the one with the lowest mean over seeds of the "
           f"final train loss (mean of the last {FINAL_WINDOW} logged steps after step 0). Final loss is mean +- std "
           "(ddof 1) over seeds at that lr. Steps to target: the first step at which the seed-mean loss "
           "curve (smoothed over the same window) reaches the unclipped run's final loss; speed-up = "
           "unclipped steps / clipped steps (> 1: clipping is faster), loss ratio = clipped / unclipped "
           "final loss (< 1: clipping ends lower). `-` where a run is missing or never reached the "
           "target; `diverged` where every seed at every lr diverged (a diverged run has no final loss, and "
           "learning rates where a seed diverged are chosen only when every lr had one). `(edge)`: the best "
           "lr is the smallest or largest of its grid, so the grid does not bracket the optimum and a better "
           "lr may lie beyond it. The figure shows the loss curves at the best lr with a +-1 std band over "
           "seeds.", ""]
    header = ["algorithm", "setting", "lr", "final loss", "clip", "clip lr", "clip final loss",
              "steps", "clip steps", "speed-up", "loss ratio"]
    for (workload,), group in sorted(group_rows(rows, ("workload",)).items()):
        body = []
        order = ("algorithm", "hparams", "label", "clip_fraction", "clip_target")
        for r in sorted(group, key=lambda r: key_order([r[k] for k in order])):
            clip = None
            if r["clip_fraction"] is not None:
                clip = optimizer_label(r["algorithm"], r["clip_fraction"], r["clip_target"])
            body.append([
                r["algorithm"], _setting(r), _lr_cell(r["lr"], r["n_seeds"], r.get("lr_at_edge")),
                _pm(r["final_loss_mean"], r["final_loss_std"], r["n_seeds"] and r["n_diverged"] == r["n_seeds"]),
                clip, _lr_cell(r["clip_lr"], r["clip_n_seeds"], r.get("clip_lr_at_edge")),
                _pm(r["clip_final_loss_mean"], r["clip_final_loss_std"],
                    r["clip_n_seeds"] and r["clip_n_diverged"] == r["clip_n_seeds"]), r["steps_to_target"],
                r["clip_steps_to_target"], r["speedup"], r["loss_ratio"],
            ])
        out += [f"### {workload}", "", markdown_table(*_drop_setting(header, body)), ""]
        out += [f"Note: {note}." for note in table3_notes(group)]
        out += [""] if table3_notes(group) else []
        out += _image(fig.figure_stem("loss", workload), figures)
    return out


def _lr_cell(lr: float | None, n_seeds: int | None, at_edge: bool | None = None) -> str | None:
    # No runs on that side (n_seeds null): "-", not the text of a null lr (Adafactor's relative step).
    return None if n_seeds is None else fig.lr_text(lr) + (" (edge)" if at_edge else "")


def _pm(m: float | None, s: float | None, diverged: object = False) -> str | None:
    if m is None:
        return "diverged" if diverged else None
    return fmt(m) if s is None else f"{fmt(m)} +- {fmt(s)}"


def _smoothness_order(r: dict[str, object]) -> tuple:
    return key_order([r[k] for k in ("trajectory", "label", "hparams", "lr", "outlier_factor", "step")])


def _smoothness_section(rows: Rows, figures: Mapping[str, Path]) -> list[str]:
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
        body = [[r["trajectory"], fig.lr_text(r["lr"]), _setting(r), r.get("gn_params"), r["outlier_factor"],
                 r.get("control_seed"), r["step"], r["n_seeds"], r.get("n_diverged"), r["L"], r["ell"], r["ratio"],
                 r["fraction_removed"], r.get("ratio_random")]
                for r in sorted(group, key=_smoothness_order)]
        out += [f"### {workload}", "", markdown_table(*_drop_setting(header, body)), ""]
        for trajectory in sorted({r["trajectory"] for r in group}):
            source, paper = smoothness_rows(published, workload, trajectory)
            if source:
                rows8 = [[e, v.get("L"), v.get("ell"), v.get("ratio"), v.get("fraction_removed")]
                         for e, v in sorted(paper.items())]
                out += [f"The paper's {source} (trajectory {trajectory}; L and ell not divided by n):", "",
                        markdown_table(["epoch", "L", "ell", "L/ell", "eps"], rows8), ""]
        out += _image(fig.figure_stem("smoothness", workload), figures)
    return out


def _topk_section(rows: Rows) -> list[str]:
    out = ["## The share of SGD's sharpness carried by its top coordinates (paper Secs. 3.2, 4.1)", "",
           "At each measurement point, SGD's update with its top-k fraction of coordinates (by |v_i|) zeroed: "
           "`masked` is the directional sharpness of what is left, `share` = 1 - v_rest^T H v_rest / v^T H v "
           "the part of the second-order term the top coordinates carry (cross terms included), `norm share` "
           "their share of ||v||^2. The paper's claim: a small fraction of coordinates carries most of SGD's "
           "sharpness (share near 1 at small k). Means over seeds (`tables/topk_share.parquet`).", ""]
    header = ["step", "k", "n masked", "sharpness", "masked", "share", "norm share"]
    for key, group in _trajectories(rows):
        body = []
        for (step, k), point in sorted(group_rows(group, ("step", "topk_fraction")).items()):
            body.append([step, k, *[mean([float(r[c]) for r in point])
                                    for c in ("n_masked", "sharpness", "sharpness_masked", "sharpness_share",
                                              "norm_share")]])
        for line in body:
            line[2] = round(line[2])
        out += [_heading(key), "", markdown_table(header, body), ""]
    return out


def _curvature_section(every: Rows, figures: Mapping[str, Path]) -> list[str]:
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
    for key, group in _trajectories(rows):
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
        out += [_heading(key), "", markdown_table(header, body), ""]
        out += _image(fig.trajectory_stem("curvature", key), figures)
    return out


def render_report(
    tables: Mapping[str, pa.Table], figures: Mapping[str, Path], states: TrialStates | None = None,
    layout: ResultsLayout | None = None,
) -> str:
    """The report's markdown text; no date in it, so the same sweep gives the same report. With
    `states` (pipeline.accounting), it says what became of every planned trial, per table; with
    `layout`, the commands, configuration and versions at the end (pipeline.provenance)."""
    rows = {name: data.to_pylist() for name, data in tables.items()}
    sweeps = sorted({r["sweep"] for data in rows.values() for r in data})
    trials = {r["trial_id"]: r["experiment"] for data in rows.values() for r in data if "trial_id" in r}
    by_experiment = ", ".join(f"{e}: {n}" for e, n in sorted(_count(trials.values()).items()))
    workloads = sorted({r["workload"] for data in rows.values() for r in data})
    diverged = [r for r in rows.get("trials", []) if r.get("status") == DIVERGED]
    counted = (f"Trials {summary_line(states.counts())} (by experiment, with records: {by_experiment or 'none'})"
               if states is not None else f"{len(trials)} trials ({by_experiment or 'none with rows'})")
    out = [f"# Sweep {', '.join(sweeps) or '-'}", "",
           f"{counted}; workloads: {', '.join(workloads) or '-'}.",
           "Reproduction of Pan & Li, \"Toward Understanding Why Adam Converges Faster Than SGD for "
           "Transformers\" (arXiv 2306.00204): the paper's claims checked first, then each measurement; "
           "the commands that regenerate this report, the configuration and the package versions at the end.", ""]
    if rows.get("orderings"):
        out += _orderings_section(rows["orderings"], diverged)
    if rows.get("table1_sharpness_ratio"):
        out += _glance_section(rows["table1_sharpness_ratio"])
        out += _sharpness_section(rows["table1_sharpness_ratio"], figures, rows.get("sharpness", []))
    if rows.get("topk_share"):
        out += _topk_section(rows["topk_share"])
    if rows.get("landscape_summary"):
        out += landscape_section(rows["landscape_summary"])
    if rows.get("local_vs_convergence"):
        out += local_vs_convergence_section(rows["local_vs_convergence"])
    if rows.get("table3_convergence"):
        out += _convergence_section(rows["table3_convergence"], figures)
    if rows.get("table8_smoothness"):
        out += _smoothness_section(rows["table8_smoothness"], figures)
    if rows.get("curvature"):
        out += _curvature_section(rows["curvature"], figures)
    linked = "\n".join(out)
    rest = [stem for stem in figures if f"figures/{stem}.png" not in linked]
    if rest:
        out += ["## Other figures", ""] + [line for stem in rest for line in _image(stem, figures)]
    out += ["## Tables", ""]
    out += [f"- `tables/{name}.parquet` ({tables[name].num_rows} rows): {note}"
            for name, note in TABLE_NOTES.items() if name in tables]
    out.append("")
    if states is not None:
        out += _accounting_section(states, tables, diverged)
    if layout is not None:
        out += provenance_section(layout)
    return "\n".join(out).rstrip() + "\n"


def _count(values: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts


def write_report(layout: ResultsLayout, tables: Mapping[str, pa.Table],
                 published: Iterable[Mapping[str, object]] | None = None) -> dict[str, Path]:
    """Render the figures into the layout's figures/ and write its report.md and report.html
    (the same text as one self-contained page, pipeline.report_html), atomically.

    Returns "report", "report_html" and "figure:<stem>" -> path. PNGs in figures/ that this run did
    not render (stale, from an earlier aggregation) are removed so the report never links old data.
    `published`: the paper's sharpness ratios, drawn as markers (pipeline.figures.sharpness_ratio);
    None: those of pipeline/paper_values.csv at the paper's last published epoch.
    """
    figure_dir = layout.figures_dir
    markers = published_sharpness_markers() if published is None else published
    figures = fig.render_figures(tables, figure_dir, markers)
    if figure_dir.is_dir():
        for png in figure_dir.glob("*.png"):
            if png.stem not in figures:
                png.unlink()
    report = layout.report_path
    text = render_report(tables, figures, trial_states(layout), layout)
    atomic_write_bytes(report, text.encode())
    page = write_html(layout.report_html_path, text, figures)
    return {"report": report, "report_html": page, **{f"figure:{stem}": path for stem, path in figures.items()}}
