"""The aggregate stage: every trial's records -> <sweep_dir>/tables/*.parquet, then the figures and report.md."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow as pa

from pipeline import orderings, tables
from pipeline.records import read_trial_records, rows_to_table, write_table
from pipeline.schemas import OUTPUT_TABLES

# Which trial tables each experiment always produces: written (empty if need be) when the
# experiment ran, so that a sweep's tables/ does not change shape with what happened to be logged.
_EXPERIMENT_TABLES = {
    "sharpness": ("sharpness", "landscape", "histogram"),
    "convergence": ("convergence",),
    "smoothness": ("smoothness",),
}
USAGE = "usage: python -m pipeline aggregate RESULTS_DIR   (RESULTS_DIR = <results_dir>/<sweep name>)"


def _experiments(records: Mapping[str, pa.Table]) -> set[str]:
    ran: set[str] = set()
    for data in records.values():
        ran.update(data.column("experiment").unique().to_pylist())
    return ran


def _derived(name: str, rows: list[dict[str, object]]) -> pa.Table:
    return rows_to_table(OUTPUT_TABLES[name], rows, identifying=True)


def build_tables(
    records: Mapping[str, pa.Table], *, final_window: int = tables.FINAL_WINDOW
) -> dict[str, pa.Table]:
    """All aggregate tables from the concatenated trial records (pipeline.records.read_trial_records)."""
    ran = _experiments(records)
    present = set(records)
    for experiment, names in _EXPERIMENT_TABLES.items():
        if experiment in ran:
            present.update(names)

    def rows(name: str) -> list[dict[str, object]]:
        return records[name].to_pylist() if name in records else []

    out: dict[str, pa.Table] = {}
    for name in ("sharpness", "landscape", "histogram", "convergence", "smoothness"):
        if name in present:
            out[name] = records[name] if name in records else OUTPUT_TABLES[name].schema.empty_table()
    if "convergence" in present:
        summary = tables.convergence_summary(rows("convergence"), final_window=final_window)
        out["convergence_summary"] = _derived("convergence_summary", summary)
        out["table3_convergence"] = _derived("table3_convergence", tables.table3_convergence(summary))
    if "sharpness" in present:
        table1 = tables.table1_sharpness_ratio(rows("sharpness"))
        out["table1_sharpness_ratio"] = _derived("table1_sharpness_ratio", table1)
    if "smoothness" in present:
        out["table8_smoothness"] = _derived("table8_smoothness", tables.table8_smoothness(rows("smoothness")))
    if "sharpness" in present or "smoothness" in present:
        checks = orderings.paper_orderings(table1 if "sharpness" in present else [],
                                           out["table8_smoothness"].to_pylist() if "smoothness" in present else [])
        out["orderings"] = _derived("orderings", checks)
    if "curvature" in present:
        joined = tables.curvature_with_sharpness(rows("curvature"), rows("sharpness"))
        out["curvature"] = _derived("curvature", joined)
    return out


def aggregate(
    sweep_dir: str | os.PathLike[str], *, final_window: int = tables.FINAL_WINDOW, report: bool = True
) -> dict[str, Path]:
    """Read every trial's records and write ``<sweep_dir>/tables/<name>.parquet`` (atomically,
    byte-identical on re-runs), then the figures and report.md unless ``report=False``.

    Returns name -> path: table names, plus "report" and "figure:<stem>" from the report stage.
    Raises ValueError when the sweep directory holds no trial records.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ValueError(f"RESULTS_DIR: {sweep_dir} is not a directory")
    records = read_trial_records(sweep_dir)
    if not records:
        raise ValueError(f"RESULTS_DIR: no trial records under {sweep_dir / 'trials'}/*/records/")
    built = build_tables(records, final_window=final_window)
    table_dir = sweep_dir / "tables"
    written = {
        name: write_table(OUTPUT_TABLES[name], data, table_dir / f"{name}.parquet") for name, data in built.items()
    }
    # A table from an earlier aggregation that has no data now would be stale: remove ours only.
    for name in OUTPUT_TABLES:
        if name not in written:
            (table_dir / f"{name}.parquet").unlink(missing_ok=True)
    if report:
        from pipeline.report import write_report  # matplotlib is only needed here

        written.update(write_report(sweep_dir, built))
    return written


def resolve_sweep_dir(path: str | os.PathLike[str]) -> Path:
    """The sweep directory itself (it has trials/), or a results dir that holds exactly one sweep."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"RESULTS_DIR: {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"RESULTS_DIR: {path} is not a directory")
    if (path / "trials").is_dir():
        return path
    sweeps = sorted(p for p in path.iterdir() if (p / "trials").is_dir())
    if len(sweeps) == 1:
        return sweeps[0]
    if not sweeps:
        raise ValueError(f"RESULTS_DIR: {path} holds no sweep (no trials/ directory in it or below it)")
    choices = ", ".join(str(p) for p in sweeps)
    raise ValueError(f"RESULTS_DIR: {path} holds {len(sweeps)} sweeps; pass one of: {choices}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline aggregate RESULTS_DIR``: argv is what follows the subcommand (a leading
    "aggregate" is tolerated). Returns 0, or 2 with one ``error: ...`` line on stderr."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "aggregate":
        args = args[1:]
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if len(args) != 1 or args[0].startswith("-"):
        print(f"error: expected exactly one argument RESULTS_DIR, got {args}; {USAGE}", file=sys.stderr)
        return 2
    try:
        sweep_dir = resolve_sweep_dir(args[0])
        written = aggregate(sweep_dir)
    except (ValueError, OSError) as err:
        message = " ".join(str(err).split())
        print(f"error: {message}", file=sys.stderr)
        return 2
    n_tables = sum(1 for name in written if name in OUTPUT_TABLES)
    n_figures = sum(1 for name in written if name.startswith("figure:"))
    print(f"{sweep_dir}: {n_tables} tables, {n_figures} figures, report {written.get('report', '-')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
