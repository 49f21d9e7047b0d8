"""Cells, tables and headings that every report.md section writes with (pipeline.report and its section modules)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline import figures as fig
from pipeline.labels import optimizer_label, setting_text
from pipeline.tables import group_rows, key_order

Rows = list[dict[str, object]]


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


def trajectories(rows: Rows) -> list[tuple[tuple, Rows]]:
    groups = group_rows(rows, fig.TRAJECTORY)  # (label, workload, algorithm, clip..., hparams, lr)
    return sorted(groups.items(), key=lambda kv: key_order(kv[0]))


def trajectory_heading(key: Sequence[object]) -> str:
    k = dict(zip(fig.TRAJECTORY, key))
    suffix = setting_text(k)
    return (f"### {k['workload']}: trajectory {optimizer_label(k['algorithm'], k['clip_fraction'], k['clip_target'])}"
            f", lr {fig.lr_text(k['lr'])}" + (f" {suffix}" if suffix else ""))


def setting_cell(row: Mapping[str, object]) -> str:
    """A row's block label and hparams for a table cell ('-' for neither)."""
    return setting_text(row) or "-"


def drop_setting(header: list[str], body: list[list[object]]) -> tuple[list[str], list[list[object]]]:
    """Without its "setting" column when no row has a block label or hparams (the usual sweep)."""
    i = header.index("setting")
    if any(row[i] != "-" for row in body):
        return header, body
    return header[:i] + header[i + 1:], [row[:i] + row[i + 1:] for row in body]


def image_lines(stem: str, figures: Mapping[str, Path]) -> list[str]:
    return [f"![{stem}](figures/{stem}.png)", ""] if stem in figures else []


def count(values: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts
