"""report.md for a sweep: the aggregate tables rendered as markdown, what each means, and the figures."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow as pa

from pipeline import figures as fig
from pipeline.accounting import STATES, TrialStates, accounting_rows, summary_line, table3_notes, trial_states
from pipeline.atomic import atomic_write_bytes
from pipeline.labels import optimizer_label
from pipeline.layout import ResultsLayout
from pipeline.paper_values import published_sharpness_markers
from pipeline.provenance import provenance_section
from pipeline.report_cells import Rows, count, drop_setting, fmt, image_lines, markdown_table, setting_cell
from pipeline.report_html import write_html
from pipeline.report_landscape import landscape_section, local_vs_convergence_section
from pipeline.report_sharpness import (
    curvature_section, glance_section, orderings_section, sharpness_section, smoothness_section, topk_section,
)
from pipeline.schemas import DIVERGED
from pipeline.tables import FINAL_WINDOW, group_rows, key_order

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
                r["algorithm"], setting_cell(r), _lr_cell(r["lr"], r["n_seeds"], r.get("lr_at_edge")),
                _pm(r["final_loss_mean"], r["final_loss_std"], r["n_seeds"] and r["n_diverged"] == r["n_seeds"]),
                clip, _lr_cell(r["clip_lr"], r["clip_n_seeds"], r.get("clip_lr_at_edge")),
                _pm(r["clip_final_loss_mean"], r["clip_final_loss_std"],
                    r["clip_n_seeds"] and r["clip_n_diverged"] == r["clip_n_seeds"]), r["steps_to_target"],
                r["clip_steps_to_target"], r["speedup"], r["loss_ratio"],
            ])
        out += [f"### {workload}", "", markdown_table(*drop_setting(header, body)), ""]
        out += [f"Note: {note}." for note in table3_notes(group)]
        out += [""] if table3_notes(group) else []
        out += image_lines(fig.figure_stem("loss", workload), figures)
    return out


def _lr_cell(lr: float | None, n_seeds: int | None, at_edge: bool | None = None) -> str | None:
    # No runs on that side (n_seeds null): "-", not the text of a null lr (Adafactor's relative step).
    return None if n_seeds is None else fig.lr_text(lr) + (" (edge)" if at_edge else "")


def _pm(m: float | None, s: float | None, diverged: object = False) -> str | None:
    if m is None:
        return "diverged" if diverged else None
    return fmt(m) if s is None else f"{fmt(m)} +- {fmt(s)}"


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
    by_experiment = ", ".join(f"{e}: {n}" for e, n in sorted(count(trials.values()).items()))
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
        out += orderings_section(rows["orderings"], diverged)
    if rows.get("table1_sharpness_ratio"):
        out += glance_section(rows["table1_sharpness_ratio"])
        out += sharpness_section(rows["table1_sharpness_ratio"], figures, rows.get("sharpness", []))
    if rows.get("topk_share"):
        out += topk_section(rows["topk_share"])
    if rows.get("landscape_summary"):
        out += landscape_section(rows["landscape_summary"])
    if rows.get("local_vs_convergence"):
        out += local_vs_convergence_section(rows["local_vs_convergence"])
    if rows.get("table3_convergence"):
        out += _convergence_section(rows["table3_convergence"], figures)
    if rows.get("table8_smoothness"):
        out += smoothness_section(rows["table8_smoothness"], figures)
    if rows.get("curvature"):
        out += curvature_section(rows["curvature"], figures)
    linked = "\n".join(out)
    rest = [stem for stem in figures if f"figures/{stem}.png" not in linked]
    if rest:
        out += ["## Other figures", ""] + [line for stem in rest for line in image_lines(stem, figures)]
    out += ["## Tables", ""]
    out += [f"- `tables/{name}.parquet` ({tables[name].num_rows} rows): {note}"
            for name, note in TABLE_NOTES.items() if name in tables]
    out.append("")
    if states is not None:
        out += _accounting_section(states, tables, diverged)
    if layout is not None:
        out += provenance_section(layout)
    return "\n".join(out).rstrip() + "\n"


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
