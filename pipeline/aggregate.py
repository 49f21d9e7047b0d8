"""The aggregate stage: every trial's records -> <sweep_dir>/tables/*.parquet (the report is the caller's next step)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa

from pipeline import orderings, tables
from pipeline.accounting import trial_states
from pipeline.local_convergence import local_vs_convergence
from pipeline.labels import EXPERIMENT_TABLES
from pipeline.layout import DONE_MARK, ResultsLayout
from pipeline.records import read_trial_records, rows_to_table, write_table
from pipeline.schemas import OUTPUT_TABLES, TRIAL_OUTPUTS, TableSpec


def _experiments(records: Mapping[str, pa.Table]) -> set[str]:
    ran: set[str] = set()
    for data in records.values():
        ran.update(data.column("experiment").unique().to_pylist())
    return ran


def _derived(name: str, rows: list[dict[str, object]]) -> pa.Table:
    return rows_to_table(OUTPUT_TABLES[name], rows, identifying=True)


def run_ids(records: Mapping[str, pa.Table]) -> dict[str, str | None]:
    """trial_id -> its MLflow run id, from the `trials` records (null where a trial had no run)."""
    if "trials" not in records:
        return {}
    data = records["trials"]
    return dict(zip(data.column("trial_id").to_pylist(), data.column("run_id").to_pylist()))


def with_identity(spec: TableSpec, data: pa.Table, runs: Mapping[str, str | None]) -> pa.Table:
    """The one place that completes a trial-level table's identity: a table whose schema has
    run_id gets its rows' run ids joined on by trial_id, in the schema's column order."""
    if "run_id" not in spec.schema.names or "trial_id" not in data.column_names:
        return data
    if "run_id" in data.column_names:
        data = data.drop_columns(["run_id"])
    ids = pa.array([runs.get(t) for t in data.column("trial_id").to_pylist()], type=pa.string())
    return data.append_column("run_id", ids).select(spec.schema.names)


def build_tables(
    records: Mapping[str, pa.Table], *, final_window: int = tables.FINAL_WINDOW
) -> dict[str, pa.Table]:
    """All aggregate tables from the concatenated trial records (pipeline.records.read_trial_records).

    Every table carries the identity of what a row summarises (pipeline.schemas.derived_spec):
    trial-level ones the trial's run id too, joined here from the `trials` records before anything
    is derived from them, so derived trial-level tables (Table 1, curvature) copy it along.
    """
    ran = _experiments(records)
    present = set(records) | {"trials"}  # every sweep has trials (their nodes and wall times)
    for experiment, names in EXPERIMENT_TABLES.items():
        if experiment in ran:
            present.update(names)
    runs = run_ids(records)
    joined = {name: with_identity(TRIAL_OUTPUTS[name], data, runs) for name, data in records.items()}

    def rows(name: str) -> list[dict[str, object]]:
        return joined[name].to_pylist() if name in joined else []

    out: dict[str, pa.Table] = {}
    for name in ("sharpness", "landscape", "landscape_summary", "histogram", "topk_share", "convergence",
                 "smoothness", "trials"):
        if name in present:
            out[name] = joined[name] if name in joined else OUTPUT_TABLES[name].schema.empty_table()
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
        checks = orderings.note_diverged(checks, rows("trials"))
        out["orderings"] = _derived("orderings", checks)
    if "landscape_summary" in present:
        summary_rows = out["convergence_summary"].to_pylist() if "convergence_summary" in out else []
        local = local_vs_convergence(rows("landscape_summary"), summary_rows)
        out["local_vs_convergence"] = _derived("local_vs_convergence", local)
    if "curvature" in present:
        joined_curvature = tables.curvature_with_sharpness(rows("curvature"), rows("sharpness"))
        out["curvature"] = _derived("curvature", joined_curvature)
    return out


def aggregate(layout: ResultsLayout, *, final_window: int = tables.FINAL_WINDOW) -> dict[str, pa.Table]:
    """Read the records of every trial with a done mark (finished or diverged: a failed trial's
    partial records, if any, do not count) and write each table to ``layout.table_path(name)``
    (atomically, byte-identical on re-runs). Returns the tables by name, for the report.

    Raises ValueError when the sweep directory holds no trial records.
    """
    if not layout.sweep_dir.is_dir():
        raise ValueError(f"RESULTS_DIR: {layout.sweep_dir} is not a directory")
    records = read_trial_records(layout, trial_states(layout).done)
    if not records:
        raise ValueError(f"RESULTS_DIR: no trial records with a done mark ({DONE_MARK}: a finished trial) "
                         f"under {layout.trials_dir}/*/records/")
    built = build_tables(records, final_window=final_window)
    for name, data in built.items():
        write_table(OUTPUT_TABLES[name], data, layout.table_path(name))
    # A table from an earlier aggregation that has no data now would be stale: remove ours only.
    for name in OUTPUT_TABLES:
        if name not in built:
            layout.table_path(name).unlink(missing_ok=True)
    return built


def coverage(layout: ResultsLayout, tables: Mapping[str, pa.Table]) -> tuple[list[str], list[str]]:
    """(planned trial ids, those of them with no records), from the plan the sweep wrote; a sweep
    directory without a plan (an older one) counts the trials it holds records of as planned."""
    found = {tid for data in tables.values() if "trial_id" in data.column_names
             for tid in data.column("trial_id").unique().to_pylist()}
    planned = layout.read_plan() or sorted(found)
    return planned, [tid for tid in planned if tid not in found]


def resolve_layout(path: str | os.PathLike[str]) -> ResultsLayout:
    """The sweep directory itself (it has trials/), or a results dir that holds exactly one sweep."""
    return ResultsLayout(_sweep_dir(Path(path)).absolute())


def _sweep_dir(path: Path) -> Path:
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
