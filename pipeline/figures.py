"""PNG figures from the aggregate tables (matplotlib, Agg canvas, no pyplot global state).

Each figure says on itself what it shows (title, axis labels with what is measured, a legend, a
one-line reading hint), so that it can be read without the report's text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import pyarrow as pa
from matplotlib.figure import Figure

from pipeline.labels import optimizer_label, probe_sort_key, setting_text
from pipeline.plotting import (  # figure_stem, lr_text, TRAJECTORY: also used by pipeline.report
    TRAJECTORY, family, family_styles, figure_stem, grid, log_axis, lr_text, save, steps_colors, title,
    trajectory_stem,
)
from pipeline.tables import group_rows, key_order, mean, sample_std

__all__ = ["TRAJECTORY", "curvature", "family_styles", "figure_stem", "histograms", "landscape", "loss_curves",
           "lr_text", "render_figures", "sharpness_ratio", "smoothness", "trajectory_stem"]

Rows = list[dict[str, object]]
# Paper Fig. 1 compares these probes' update coordinates (SGD momentum, Adam, Adafactor).
FIG1_PROBES = ("sgd", "adam", "adafactor")


def _trajectories(rows: Rows) -> list[tuple[tuple, Rows]]:
    return sorted(group_rows(rows, TRAJECTORY).items(), key=lambda kv: key_order(kv[0]))


def landscape(rows: Rows) -> dict[tuple, Figure]:
    """Per probe, the loss change along its normalized update direction, one line per measurement
    step (mean over seeds); a star marks the best step size (lowest loss) of each line."""
    figures = {}
    for key, group in _trajectories(rows):
        steps = sorted({r["step"] for r in group})
        probes = sorted({r["probe"] for r in group}, key=probe_sort_key)
        colors = steps_colors(steps)
        fig, axes = grid(len(probes), 3.6, 2.7)
        for ax, probe in zip(axes, probes):
            for step in steps:
                by_offset = group_rows([r for r in group if r["probe"] == probe and r["step"] == step], ("offset",))
                if not by_offset:
                    continue
                offsets = sorted(o for (o,) in by_offset)
                change = [mean([r["loss_change"] for r in by_offset[(o,)]]) for o in offsets]
                ax.plot(offsets, change, color=colors[step], label=f"step {step}", marker=".")
                finite = [(c, o) for o, c in zip(offsets, change) if math.isfinite(c)]
                if finite:
                    best_change, best_offset = min(finite)
                    ax.plot([best_offset], [best_change], marker="*", markersize=13, color=colors[step],
                            markeredgecolor="black", linestyle="none")
            ax.axhline(0.0, color="grey", linewidth=0.6)
            ax.axvline(0.0, color="grey", linewidth=0.6)
            ax.set(title=probe, xlabel="step size s along v/||v||", ylabel="loss change")
        axes[0].legend(fontsize=7, title="measured at", title_fontsize=7)
        fig.suptitle(f"{title(key)}\nloss along each probe's update direction; star: best step size",
                     fontsize=11)
        figures[("landscape", *key)] = fig
    return figures


def histograms(rows: Rows) -> dict[tuple, Figure]:
    """Paper Fig. 1: the distribution over coordinates of log10 |v_i| (the table's bins; |v_i| / max|v| for
    the relative scale) for SGD, Adam and Adafactor (the unclipped probes when those are absent), one panel
    per measurement step; fractions of all coordinates, the out-of-range ones included."""
    figures = {}
    for key, group in _trajectories(rows):
        present = sorted({r["probe"] for r in group}, key=probe_sort_key)
        probes = [p for p in FIG1_PROBES if p in present] or [p for p in present if not family(p)[1]] or present
        steps = sorted({r["step"] for r in group})
        styles = family_styles(present)
        relative = any(r.get("scale") == "relative" for r in group)
        xlabel = "log10 |v_i| / max |v|  (relative scale)" if relative else "log10 |v_i|  (absolute scale)"
        fig, axes = grid(len(steps), 4.6, 3.0, cols=2)
        for ax, step in zip(axes, steps):
            for probe in probes:
                sr = [r for r in group if r["probe"] == probe and r["step"] == step]
                bins = group_rows(sr, ("bin_lo", "bin_hi"))
                edges = sorted(e for e in bins if math.isfinite(e[0]) and math.isfinite(e[1]))
                if not edges:
                    continue
                total = sum(r["count"] for r in sr) or 1  # out-of-range rows included: fractions of all
                counts = [sum(r["count"] for r in bins[e]) for e in edges]
                ax.stairs([c / total for c in counts], [e[0] for e in edges] + [edges[-1][1]],
                          label=probe, color=styles[probe]["color"], linewidth=1.8)
            ax.set(title=f"step {step}", xlabel=xlabel,
                   ylabel="fraction of coordinates")
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{title(key)}\nhow update coordinates spread (paper Fig. 1): "
                     "mass far left = many tiny coordinates", fontsize=11)
        figures[("histogram", *key)] = fig
    return figures


def _published_points(published: Iterable[Mapping[str, object]] | None, key: Sequence[object]
                      ) -> dict[str, list[tuple[int | None, float]]]:
    """probe -> [(step or None, the paper's ratio)] for this trajectory's workload and training optimizer."""
    k = dict(zip(TRAJECTORY, key))
    trajectory = optimizer_label(k["algorithm"], k["clip_fraction"], k["clip_target"])
    out: dict[str, list[tuple[int | None, float]]] = {}
    for p in published or ():
        if p.get("workload") == k["workload"] and p.get("trajectory") == trajectory and p.get("ratio") is not None:
            out.setdefault(str(p["probe"]), []).append((p.get("step"), float(p["ratio"])))
    return out


def sharpness_ratio(rows: Rows, published: Iterable[Mapping[str, object]] | None = None) -> dict[tuple, Figure]:
    """Directional sharpness ratio to SGD per probe over steps (mean over seeds; Table 1 rows), on a
    log scale. `published`: the paper's values, rows with workload, trajectory, probe, ratio and
    optionally step; drawn as hollow diamonds in the probe's colour (at the last step when a value
    has no step: the paper reports one training point per table)."""
    figures = {}
    for key, group in _trajectories(rows):
        fig = Figure(figsize=(8, 5), layout="constrained")
        ax = fig.subplots()
        probes = sorted({r["probe"] for r in group}, key=probe_sort_key)
        styles = family_styles(probes)
        steps = sorted({r["step"] for r in group})
        paper = _published_points(published, key)
        values = []
        for probe in probes:
            points = sorted({r["step"]: r["ratio_mean"] for r in group
                             if r["probe"] == probe and r["ratio_mean"] is not None}.items())
            if points:
                ax.plot(*zip(*points), marker="o", label=probe, **styles[probe])
                values += [v for _, v in points]
            for step, ratio in paper.get(probe, []):
                ax.plot([steps[-1] if step is None else step], [ratio], marker="D", markersize=9,
                        markerfacecolor="none", markeredgewidth=1.8, color=styles[probe]["color"], linestyle="none")
                values.append(ratio)
        if not any(line.get_label() in probes for line in ax.get_lines()):
            continue  # every seed of this trajectory diverged: nothing of ours to draw
        if paper:
            ax.plot([], [], marker="D", markerfacecolor="none", color="black", linestyle="none",
                    label="paper (last epoch)")
        scale = log_axis(ax, values)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set(xlabel="training step", ylabel=f"directional sharpness / SGD's {scale}",
               title=f"{title(key)}\nsharpness of each probe's direction relative to SGD's; below 1: flatter")
        ax.legend(fontsize=7, ncol=2)
        figures[("sharpness_ratio", *key)] = fig
    return figures


def curvature(rows: Rows) -> dict[tuple, Figure]:
    """Top Hessian eigenvalue beside each probe's (raw) directional sharpness, mean over seeds."""
    figures = {}
    for key, group in _trajectories(rows):
        fig = Figure(figsize=(8, 5), layout="constrained")
        ax = fig.subplots()
        tops = group_rows({(r["trial_id"], r["step"]): r for r in group}.values(), ("step",))
        steps = sorted(s for (s,) in tops)
        top = [mean([r["top_eigenvalue"] for r in tops[(s,)]]) for s in steps]
        ax.plot(steps, top, color="black", linewidth=2.5, marker="s", label="top eigenvalue")
        values = list(top)
        probes = sorted({r["probe"] for r in group if r["probe"] is not None}, key=probe_sort_key)
        styles = family_styles(probes)
        for probe in probes:
            by_step = group_rows([r for r in group if r["probe"] == probe], ("step",))
            xs = sorted(s for (s,) in by_step)
            ys = [mean([r["directional_sharpness"] for r in by_step[(s,)]]) for s in xs]
            ax.plot(xs, ys, marker=".", label=probe, **styles[probe])
            values += ys
        scale = log_axis(ax, values)
        ax.set(xlabel="training step", ylabel=f"curvature {scale}",
               title=f"{title(key)}\ntop Hessian eigenvalue (black) and each probe's directional sharpness "
               "(never above it)")
        ax.legend(fontsize=7, ncol=2)
        figures[("curvature", *key)] = fig
    return figures


def smoothness(rows: Rows) -> dict[tuple, Figure]:
    """Gauss-Newton L and ell (and L/ell) over steps, one line per trajectory (Table 8 rows)."""
    figures = {}
    for (workload,), group in group_rows(rows, ("workload",)).items():
        fig = Figure(figsize=(12, 3.8), layout="constrained")
        axes = fig.subplots(1, 3)
        lines = group_rows(group, ("trajectory", "label", "hparams", "lr", "outlier_factor", "gn_params"))
        for key, tr in sorted(lines.items(), key=lambda kv: key_order(kv[0])):
            tr = sorted(tr, key=lambda r: r["step"])
            suffix = setting_text(tr[0])
            label = f"{key[0]} lr {lr_text(key[3])} factor {key[4]:g} {key[5]}" + (f" {suffix}" if suffix else "")
            for ax, col in zip(axes, ("L", "ell", "ratio")):
                ax.plot([r["step"] for r in tr], [r[col] for r in tr], marker="o", label=label)
            # The control: L over the norm after removing as many random coordinates.
            axes[2].plot([r["step"] for r in tr], [r["ratio_random"] for r in tr], linestyle="--",
                         label=f"{label}, random removal")
        for ax, name in zip(axes, ("L (GN spectral norm)", "ell (outlier rows removed)", "L / ell (dashed: random)")):
            ax.set(xlabel="training step", title=name)
        axes[0].legend(fontsize=6)
        fig.suptitle(f"{workload}: Gauss-Newton smoothness; L/ell > 1 with few rows removed = few coordinates "
                     "carry the bad smoothness")
        figures[("smoothness", workload)] = fig
    return figures


def loss_curves(convergence: Rows, summary: Rows) -> dict[tuple, Figure]:
    """Train loss per setting at its best lr: mean over seeds, band = +-1 std; a clipped setting in
    its unclipped twin's colour at lower opacity, dashed."""
    figures = {}
    setting = ("label", "algorithm", "clip_fraction", "clip_target", "hparams")
    best = {tuple(r[k] for k in ("workload", *setting)): r["best_lr"] for r in summary}
    for (workload,), group in group_rows(convergence, ("workload",)).items():
        fig = Figure(figsize=(8, 5), layout="constrained")
        ax = fig.subplots()
        runs = group_rows(group, setting)
        names = {k: _setting_name(dict(zip(setting, k))) for k in runs}
        styles = family_styles(names[k] for k in sorted(runs, key=key_order))
        for k in sorted(runs, key=key_order):
            lr = best.get((workload, *k))
            by_step = group_rows([r for r in runs[k] if r["lr"] == lr], ("step",))
            steps = sorted(s for (s,) in by_step)
            losses = [[r["train_loss"] for r in by_step[(s,)]] for s in steps]
            mu = [mean(v) for v in losses]
            sd = [sample_std(v) or 0.0 for v in losses]
            style = styles[names[k]]
            ax.plot(steps, mu, label=f"{names[k]} (lr {lr_text(lr)})", **style)
            ax.fill_between(steps, [m - s for m, s in zip(mu, sd)], [m + s for m, s in zip(mu, sd)],
                            color=style["color"], alpha=0.15 * style["alpha"], linewidth=0)
        ax.set(xlabel="training step", ylabel="train loss",
               title=f"{workload}: train loss at each setting's best lr\n(band: ±1 std over seeds; dashed, lighter: "
               "the clipped variant of the same colour)")
        ax.legend(fontsize=7)
        figures[("loss", workload)] = fig
    return figures


def _setting_name(k: Mapping[str, object]) -> str:
    name = optimizer_label(k["algorithm"], k["clip_fraction"], k["clip_target"])
    suffix = setting_text(k)
    return f"{name} {suffix}" if suffix else name


def render_figures(tables: Mapping[str, pa.Table], out_dir: Path,
                   published: Iterable[Mapping[str, object]] | None = None) -> dict[str, Path]:
    """Every figure the tables have data for, as ``out_dir/<stem>.png``; returns stem -> path.
    `published`: the paper's sharpness ratios for sharpness_ratio's markers (None: none drawn)."""
    def rows(name: str) -> Rows:
        return tables[name].to_pylist() if name in tables else []

    makers: list[Callable[[], dict[tuple, Figure]]] = [
        lambda: landscape(rows("landscape")),
        lambda: loss_curves(rows("convergence"), rows("convergence_summary")),
        lambda: histograms(rows("histogram")),
        lambda: sharpness_ratio(rows("table1_sharpness_ratio"), published),
        lambda: smoothness(rows("table8_smoothness")),
        lambda: curvature(rows("curvature")),
    ]
    written: dict[str, Path] = {}
    for make in makers:
        for key, fig in make().items():
            stem = figure_stem(*key) if len(key) == 2 else trajectory_stem(key[0], key[1:])
            written[stem] = save(fig, out_dir / f"{stem}.png")
    return dict(sorted(written.items()))
