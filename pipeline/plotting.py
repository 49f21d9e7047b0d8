"""Shared pieces of the figures: file stems, one colour per optimizer family (a clipped variant
lighter in its twin's colour), grids, log axes, titles and the deterministic PNG writer."""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.atomic import atomic_write_bytes
from pipeline.labels import TRAJECTORY_KEY, hparams_text, optimizer_label, parse_label, setting_text

# One trajectory within a sweep: (label, workload, algorithm, clip_fraction, clip_target, hparams, lr).
TRAJECTORY = tuple(k for k in TRAJECTORY_KEY if k != "sweep")
_DPI = 100
_TWIN_ALPHA = 0.45  # a clipped variant: its unclipped twin's colour at this opacity (paper Fig. 2)


def lr_text(lr: float | None) -> str:
    return "relative step" if lr is None else f"{lr:g}"


def figure_stem(kind: str, workload: str, algorithm: str | None = None, clip_fraction: float = 0.0,
                clip_target: str = "grad", lr: float | None = None, *, label: str | None = None,
                hparams: str | None = None) -> str:
    """Deterministic, filesystem-safe file stem: <kind>_<workload>[_<label>][_<trajectory>_lr<lr>][_<hparams>].

    Label and hparams are part of it, so two blocks that differ only in them never share a file.
    """
    parts = [kind, workload, label or ""]
    if algorithm is not None:
        parts += [optimizer_label(algorithm, clip_fraction, clip_target), "lr" + ("rel" if lr is None else f"{lr:g}")]
    extra = hparams_text(hparams).replace(", ", "_")
    if len(extra) > 40:  # long hparams: a short stable digest keeps file names readable
        extra = "hp" + hashlib.sha1(str(hparams).encode()).hexdigest()[:8]
    parts.append(extra)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(p for p in parts if p))


def trajectory_stem(kind: str, key: Sequence[object]) -> str:
    """figure_stem of a TRAJECTORY key."""
    k = dict(zip(TRAJECTORY, key))
    return figure_stem(kind, k["workload"], k["algorithm"], k["clip_fraction"], k["clip_target"], k["lr"],
                       label=k["label"], hparams=k["hparams"])


def save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    # No "Software"/date chunks: the same data gives the same PNG bytes.
    fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    atomic_write_bytes(path, buffer.getvalue())
    return path


def grid(n: int, width: float = 4.0, height: float = 3.0, cols: int = 4) -> tuple[Figure, list]:
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def steps_colors(steps: Sequence[int]) -> dict[int, object]:
    cmap = colormaps["viridis"]
    return {s: cmap(0.85 * i / max(1, len(steps) - 1)) for i, s in enumerate(steps)}


def family(label: str) -> tuple[str, bool]:
    """(the unclipped twin's label, clipped?) of a probe or trajectory label: adam_clip0.5 -> (adam, True)."""
    try:
        algorithm, fraction, _ = parse_label(label)
    except ValueError:  # a config's own probe label: a family of its own
        return label, False
    return algorithm, fraction != 0


def family_styles(labels: Iterable[str]) -> dict[str, dict[str, object]]:
    """Plot style per label: one tab10 colour per unclipped algorithm; a clipped variant takes its
    twin's colour at lower opacity with a dashed line (as the paper's Fig. 2 draws them)."""
    labels = list(dict.fromkeys(labels))
    families = list(dict.fromkeys(family(lb)[0] for lb in labels))
    cmap = colormaps["tab10"]
    colour = {f: cmap(i % 10) for i, f in enumerate(families)}
    styles = {}
    for lb in labels:
        twin, clipped = family(lb)
        styles[lb] = {"color": colour[twin], "alpha": _TWIN_ALPHA if clipped else 1.0,
                      "linestyle": "--" if clipped else "-"}
    return styles


def positive(values: Sequence[float]) -> bool:
    return bool(values) and all(v is not None and math.isfinite(v) and v > 0 for v in values)


def log_axis(ax, values: Sequence[float]) -> str:
    """A log y axis; symmetric log (linear within the smallest magnitude) when some values are <= 0,
    so ratios over decades stay readable either way. Returns the axis label's scale note."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return ""
    if positive(finite):
        ax.set_yscale("log")
        return "(log scale)"
    small = min((abs(v) for v in finite if v != 0), default=1.0)
    ax.set_yscale("symlog", linthresh=small)
    return "(symlog: some <= 0)"


def title(key: Sequence[object]) -> str:
    k = dict(zip(TRAJECTORY, key))
    suffix = setting_text(k)
    return (f"{k['workload']}: trained with {optimizer_label(k['algorithm'], k['clip_fraction'], k['clip_target'])}, "
            f"lr {lr_text(k['lr'])}" + (f" {suffix}" if suffix else ""))
