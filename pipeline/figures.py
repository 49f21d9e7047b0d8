"""PNG figures from the aggregate tables (matplotlib, Agg canvas, no pyplot global state)."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pyarrow as pa
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.atomic import atomic_write_bytes
from pipeline.labels import TRAJECTORY_KEY, optimizer_label
from pipeline.tables import group_rows, mean, sample_std

Rows = list[dict[str, object]]
TRAJECTORY = TRAJECTORY_KEY[1:]  # (workload, algorithm, clip_fraction, clip_target, lr): one sweep's figures
_DPI = 100


def lr_text(lr: float | None) -> str:
    return "relative step" if lr is None else f"{lr:g}"


def figure_stem(kind: str, workload: str, algorithm: str | None = None, clip_fraction: float = 0.0,
                clip_target: str = "grad", lr: float | None = None) -> str:
    """Deterministic, filesystem-safe file stem: <kind>_<workload>[_<trajectory>_lr<lr>]."""
    parts = [kind, workload]
    if algorithm is not None:
        parts += [optimizer_label(algorithm, clip_fraction, clip_target), "lr" + ("rel" if lr is None else f"{lr:g}")]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts))


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    # No "Software"/date chunks: the same data gives the same PNG bytes.
    fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _grid(n: int, width: float = 4.0, height: float = 3.0) -> tuple[Figure, list]:
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _colors(labels: Sequence[str], sequential: bool = False) -> dict[str, object]:
    """Fixed colour per label: tab20's ten dark shades first, then the light ones (the paper's
    twelve probes stay distinguishable); a sequential map for ordered labels such as steps."""
    if sequential:
        cmap = colormaps["viridis"]
        return {label: cmap(i / max(1, len(labels) - 1)) for i, label in enumerate(labels)}
    cmap = colormaps["tab20"]
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return {label: cmap(order[i % 20]) for i, label in enumerate(labels)}


def _positive(values: Sequence[float]) -> bool:
    return bool(values) and all(v is not None and math.isfinite(v) and v > 0 for v in values)


def _title(key: Sequence[object]) -> str:
    workload, algorithm, clip_fraction, clip_target, lr = key
    return f"{workload}: trained with {optimizer_label(algorithm, clip_fraction, clip_target)}, lr {lr_text(lr)}"


def landscape(rows: Rows) -> dict[tuple, Figure]:
    """Loss change along each probe's normalized direction, one panel per step, mean over seeds."""
    figures = {}
    for key, group in group_rows(rows, TRAJECTORY).items():
        steps = sorted({r["step"] for r in group})
        probes = sorted({r["probe"] for r in group})
        colors = _colors(probes)
        fig, axes = _grid(len(steps))
        for ax, step in zip(axes, steps):
            for (probe,), pr in sorted(group_rows([r for r in group if r["step"] == step], ("probe",)).items()):
                by_offset = group_rows(pr, ("offset",))
                offsets = sorted(o for (o,) in by_offset)
                ax.plot(offsets, [mean([r["loss_change"] for r in by_offset[(o,)]]) for o in offsets],
                        label=probe, color=colors[probe])
            ax.axhline(0.0, color="grey", linewidth=0.5)
            ax.set(title=f"step {step}", xlabel="offset s along v/||v||", ylabel="loss change")
        axes[0].legend(fontsize=6)
        fig.suptitle(_title(key))
        figures[("landscape", *key)] = fig
    return figures


def histograms(rows: Rows) -> dict[tuple, Figure]:
    """Paper Fig. 1: distribution of log10 |v_i| (or of |v_i| / max|v|) per probe, one line per step."""
    figures = {}
    for key, group in group_rows(rows, TRAJECTORY).items():
        probes = sorted({r["probe"] for r in group})
        steps = sorted({r["step"] for r in group})
        fig, axes = _grid(len(probes), 3.5, 2.6)
        colors = _colors([str(s) for s in steps], sequential=True)
        for ax, probe in zip(axes, probes):
            for (step,), sr in sorted(group_rows([r for r in group if r["probe"] == probe], ("step",)).items()):
                bins = group_rows(sr, ("bin_lo", "bin_hi"))
                total = sum(r["count"] for r in sr) or 1  # out-of-range rows included: fractions of all
                edges = sorted(e for e in bins if math.isfinite(e[0]) and math.isfinite(e[1]))
                counts = [sum(r["count"] for r in bins[e]) for e in edges]
                ax.stairs([c / total for c in counts], [e[0] for e in edges] + [edges[-1][1]],
                          label=f"step {step}", color=colors[str(step)])
            relative = any(r.get("scale") == "relative" for r in group)
            ax.set(title=probe, xlabel="log10 |v_i| / max |v|" if relative else "log10 |v_i|", ylabel="fraction")
        axes[0].legend(fontsize=6)
        fig.suptitle(_title(key))
        figures[("histogram", *key)] = fig
    return figures


def sharpness_ratio(rows: Rows) -> dict[tuple, Figure]:
    """Directional sharpness ratio to SGD per probe over steps (mean over seeds; Table 1 rows)."""
    figures = {}
    for key, group in group_rows(rows, TRAJECTORY).items():
        fig = Figure(figsize=(7, 4.5), layout="constrained")
        ax = fig.subplots()
        values = []
        probes = sorted({r["probe"] for r in group})
        colors = _colors(probes)
        for (probe,), pr in sorted(group_rows(group, ("probe",)).items()):
            points = sorted({r["step"]: r["ratio_mean"] for r in pr if r["ratio_mean"] is not None}.items())
            if points:
                ax.plot(*zip(*points), marker="o", label=probe, color=colors[probe])
                values += [v for _, v in points]
        if not values:  # every seed of this trajectory diverged: nothing to draw
            continue
        if _positive(values):
            ax.set_yscale("log")
        ax.set(xlabel="step", ylabel="sharpness / SGD sharpness", title=_title(key))
        ax.legend(fontsize=6, ncol=2)
        figures[("sharpness_ratio", *key)] = fig
    return figures


def curvature(rows: Rows) -> dict[tuple, Figure]:
    """Top Hessian eigenvalue beside each probe's (raw) directional sharpness, mean over seeds."""
    figures = {}
    for key, group in group_rows(rows, TRAJECTORY).items():
        fig = Figure(figsize=(7, 4.5), layout="constrained")
        ax = fig.subplots()
        tops = group_rows({(r["trial_id"], r["step"]): r for r in group}.values(), ("step",))
        steps = sorted(s for (s,) in tops)
        top = [mean([r["top_eigenvalue"] for r in tops[(s,)]]) for s in steps]
        ax.plot(steps, top, color="black", linewidth=2.5, marker="s", label="top eigenvalue")
        values = list(top)
        probes = sorted({r["probe"] for r in group if r["probe"] is not None})
        colors = _colors(probes)
        for probe in probes:
            by_step = group_rows([r for r in group if r["probe"] == probe], ("step",))
            xs = sorted(s for (s,) in by_step)
            ys = [mean([r["directional_sharpness"] for r in by_step[(s,)]]) for s in xs]
            ax.plot(xs, ys, marker=".", label=probe, color=colors[probe])
            values += ys
        if _positive(values):
            ax.set_yscale("log")
        ax.set(xlabel="step", ylabel="curvature", title=_title(key))
        ax.legend(fontsize=6, ncol=2)
        figures[("curvature", *key)] = fig
    return figures


def smoothness(rows: Rows) -> dict[tuple, Figure]:
    """Gauss-Newton L and ell (and L/ell) over steps, one line per trajectory (Table 8 rows)."""
    figures = {}
    for (workload,), group in group_rows(rows, ("workload",)).items():
        fig = Figure(figsize=(12, 3.6), layout="constrained")
        axes = fig.subplots(1, 3)
        lines = group_rows(group, ("trajectory", "lr", "outlier_factor", "gn_params"))
        for key, tr in sorted(lines.items(), key=lambda kv: str(kv[0])):
            tr = sorted(tr, key=lambda r: r["step"])
            label = f"{key[0]} lr {lr_text(key[1])} factor {key[2]:g} {key[3]}"
            for ax, col in zip(axes, ("L", "ell", "ratio")):
                ax.plot([r["step"] for r in tr], [r[col] for r in tr], marker="o", label=label)
            # The control: L over the norm after removing as many random coordinates.
            axes[2].plot([r["step"] for r in tr], [r["ratio_random"] for r in tr], linestyle="--",
                         label=f"{label}, random removal")
        for ax, name in zip(axes, ("L (GN spectral norm)", "ell (outliers removed)", "L / ell (dashed: random)")):
            ax.set(xlabel="step", title=name)
        axes[0].legend(fontsize=6)
        fig.suptitle(f"{workload}: Gauss-Newton smoothness")
        figures[("smoothness", workload)] = fig
    return figures


def loss_curves(convergence: Rows, summary: Rows) -> dict[tuple, Figure]:
    """Train loss per algorithm x clip setting at its best lr: mean over seeds, band = +-1 std."""
    figures = {}
    best = {(r["workload"], r["algorithm"], r["clip_fraction"], r["clip_target"]): r["best_lr"] for r in summary}
    for (workload,), group in group_rows(convergence, ("workload",)).items():
        fig = Figure(figsize=(7, 4.5), layout="constrained")
        ax = fig.subplots()
        runs = group_rows(group, ("algorithm", "clip_fraction", "clip_target"))
        colors = _colors([optimizer_label(*k) for k in sorted(runs)])
        for k in sorted(runs):
            lr = best.get((workload, *k))
            by_step = group_rows([r for r in runs[k] if r["lr"] == lr], ("step",))
            steps = sorted(s for (s,) in by_step)
            losses = [[r["train_loss"] for r in by_step[(s,)]] for s in steps]
            mu = [mean(v) for v in losses]
            sd = [sample_std(v) or 0.0 for v in losses]
            label = optimizer_label(*k)
            ax.plot(steps, mu, label=f"{label} (lr {lr_text(lr)})", color=colors[label])
            ax.fill_between(steps, [m - s for m, s in zip(mu, sd)], [m + s for m, s in zip(mu, sd)],
                            color=colors[label], alpha=0.2, linewidth=0)
        ax.set(xlabel="step", ylabel="train loss",
               title=f"{workload}: train loss at the best lr (band: ±1 std over seeds)")
        ax.legend(fontsize=7)
        figures[("loss", workload)] = fig
    return figures


def render_figures(tables: Mapping[str, pa.Table], out_dir: Path) -> dict[str, Path]:
    """Every figure the tables have data for, as ``out_dir/<stem>.png``; returns stem -> path."""
    def rows(name: str) -> Rows:
        return tables[name].to_pylist() if name in tables else []

    makers: list[Callable[[], dict[tuple, Figure]]] = [
        lambda: landscape(rows("landscape")),
        lambda: loss_curves(rows("convergence"), rows("convergence_summary")),
        lambda: histograms(rows("histogram")),
        lambda: sharpness_ratio(rows("table1_sharpness_ratio")),
        lambda: smoothness(rows("table8_smoothness")),
        lambda: curvature(rows("curvature")),
    ]
    written: dict[str, Path] = {}
    for make in makers:
        for key, fig in make().items():
            stem = figure_stem(*key)
            written[stem] = _save(fig, out_dir / f"{stem}.png")
    return dict(sorted(written.items()))
