"""The values Pan & Li 2023 publish (Tables 1, 3-9), loaded from pipeline/paper_values.csv.

One CSV row per published number: `table` (1, 3, 4, 5, 6, 7, 8, 9), `workload` (ours:
translation for the t5 machine-translation tables 1/4/6, causal_lm for the GPT-Neo tables 5/7,
classification for the BERT Table 8, image for the ResNet Table 9), `trajectory` (the training
optimizer: sgd for Tables 1/4/5/9, adam for 6/7/8; empty for Table 3), `row` (our probe or
optimizer label, e.g. adam_clipupdate0.5; "smoothness" for Table 8), `paper_row` (the row as the
paper prints it), `column` (ratio_1..ratio_3 and mean for the three-seed Tables 4/6; ratio for
Tables 5/7/9; sharpness and ratio for Table 1; lr for Table 3; L, ell, ratio, fraction_removed
for Table 8), `epoch` (empty for Table 3) and `value` (empty for Adafactor's relative step in
Table 3). Values are copied as printed, signs included: the paper's negative ratios are data.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

PAPER_VALUES_PATH = Path(__file__).with_name("paper_values.csv")

# Which published table holds the sharpness ratios to SGD of a (workload, trajectory), and its
# column: the mean over the paper's three experiments where it ran three (Tables 4 and 6).
SHARPNESS_TABLES: dict[tuple[str, str], tuple[int, str]] = {
    ("translation", "sgd"): (4, "mean"),
    ("causal_lm", "sgd"): (5, "ratio"),
    ("translation", "adam"): (6, "mean"),
    ("causal_lm", "adam"): (7, "ratio"),
    ("image", "sgd"): (9, "ratio"),
}
# The Gauss-Newton smoothness table (App. D): BERT on IMDB trained with Adam.
SMOOTHNESS_TABLE: tuple[int, str, str] = (8, "classification", "adam")
TABLES = (1, 3, 4, 5, 6, 7, 8, 9)
_HEADER = ["table", "workload", "trajectory", "row", "paper_row", "column", "epoch", "value"]


@dataclass(frozen=True)
class PaperValue:
    """One published number (see the module docstring for the fields)."""

    table: int
    workload: str
    trajectory: str | None
    row: str
    paper_row: str
    column: str
    epoch: int | None
    value: float | None


def load_paper_values(path: str | Path | None = None) -> list[PaperValue]:
    """Every published value, in file order; ValueError naming the file and line on a bad row."""
    path = Path(path) if path is not None else PAPER_VALUES_PATH
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != _HEADER:
            raise ValueError(f"{path}: header must be {','.join(_HEADER)}, got {header}")
        return [_parse(path, number, cells) for number, cells in enumerate(reader, start=2)]


def _parse(path: Path, number: int, cells: Sequence[str]) -> PaperValue:
    if len(cells) != len(_HEADER):
        raise ValueError(f"{path}:{number}: expected {len(_HEADER)} fields, got {len(cells)}")
    table, workload, trajectory, row, paper_row, column, epoch, value = cells
    try:
        parsed = PaperValue(int(table), workload, trajectory or None, row, paper_row, column,
                            int(epoch) if epoch else None, float(value) if value else None)
    except ValueError as err:
        raise ValueError(f"{path}:{number}: {err}") from None
    if parsed.table not in TABLES or (parsed.value is not None and not math.isfinite(parsed.value)):
        raise ValueError(f"{path}:{number}: table must be one of {TABLES} and value finite, got {cells}")
    return parsed


def sharpness_ratios(values: Iterable[PaperValue], workload: str,
                     trajectory: str) -> tuple[str | None, dict[str, dict[int, float]]]:
    """(source, probe -> epoch -> published ratio to SGD) for a workload and trajectory; (None, {})
    where the paper published none (e.g. any trajectory but SGD's on the ResNet of App. E)."""
    where = SHARPNESS_TABLES.get((workload, trajectory))
    if where is None:
        return None, {}
    table, column = where
    series: dict[str, dict[int, float]] = {}
    for v in values:
        if v.table == table and v.column == column and v.value is not None and v.epoch is not None:
            series.setdefault(v.row, {})[v.epoch] = v.value
    return f"Table {table} ({column})", series


def smoothness_rows(values: Iterable[PaperValue], workload: str,
                    trajectory: str) -> tuple[str | None, dict[int, dict[str, float]]]:
    """(source, epoch -> {L, ell, ratio, fraction_removed}) of Table 8 for its workload and trajectory."""
    table, table_workload, table_trajectory = SMOOTHNESS_TABLE
    if (workload, trajectory) != (table_workload, table_trajectory):
        return None, {}
    rows: dict[int, dict[str, float]] = {}
    for v in values:
        if v.table == table and v.value is not None and v.epoch is not None:
            rows.setdefault(v.epoch, {})[v.column] = v.value
    return f"Table {table}", rows


def published_sharpness_markers(values: Iterable[PaperValue] | None = None) -> list[dict[str, object]]:
    """The paper's sharpness ratio to SGD at its last published epoch, one row per workload, training
    trajectory and probe: what pipeline.figures.sharpness_ratio draws as markers."""
    values = load_paper_values() if values is None else list(values)
    out: list[dict[str, object]] = []
    for workload, trajectory in SHARPNESS_TABLES:
        _, series = sharpness_ratios(values, workload, trajectory)
        for probe, by_epoch in sorted(series.items()):
            last = max(by_epoch)
            out.append({"workload": workload, "trajectory": trajectory, "probe": probe, "ratio": by_epoch[last],
                        "epoch": last})
    return out
