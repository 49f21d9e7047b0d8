"""`python -m pipeline sync-mlflow RESULTS_DIR`: repair a sweep's tracking runs from its records.

The records are the source of truth; the tracking store may have missed part of a sweep (its server
was down, the driver was killed). For each trial with a done mark this finds its run (by trial id,
under the sweep's one run) or creates it, and sends what the run lacks: tags and params, the step
metrics the records hold (each step once), the record files as artifacts; it ends the run FINISHED.
Runs still RUNNING whose trial has no records end KILLED, the sweep's report, tables and figures
(when `sweep` or `aggregate` wrote them) go to the sweep's run as artifacts (a file of the same name
replaced), and that run ends FINISHED when every planned trial has its records (else FAILED, naming
how many lack them). Running it twice changes nothing the second time. It goes through the Tracker
interface (pipeline.tracking).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.config import Trial
from pipeline.layout import ResultsLayout
from pipeline.schemas import IDENTIFYING_COLUMNS
from pipeline.tracking import Tracker

TRACKING_FILE = "tracking.json"  # written by the sweep: its tracking URI (password masked), its experiment
# What the live trial reports per table (the experiments' hooks), rebuilt from one record row.
_GN_REPORTED = ("L", "ell", "ratio", "fraction_removed")


@dataclass
class SyncSummary:
    trials: int = 0  # trials with records, whose runs now hold them
    metrics: int = 0  # metric points sent (those the runs lacked)
    stale: dict[str, str] = field(default_factory=dict)  # trial id -> status of a RUNNING run ended
    missing: list[str] = field(default_factory=list)  # planned trials without records
    report_files: int = 0  # report, table and figure files now in the sweep's run


def recorded_tracking(layout: ResultsLayout) -> dict[str, str]:
    """The tracking URI and experiment the sweep used ({} before the sweep wrote them)."""
    try:
        data = json.loads((layout.sweep_dir / TRACKING_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def metric_points(records_dir: Path) -> Iterator[tuple[int, dict[str, float]]]:
    """The step metrics a trial reported live, as far as its records hold them."""
    for path in sorted(records_dir.glob("*.parquet")):
        table = path.stem
        if table not in ("convergence", "sharpness", "smoothness"):
            continue
        for row in pq.read_table(path).to_pylist():
            step = row.get("step")
            if step is None:
                continue
            if table == "convergence":
                values = {k: v for k, v in row.items()
                          if k != "step" and k not in IDENTIFYING_COLUMNS and isinstance(v, (int, float))}
            elif table == "sharpness":
                values = {f"sharpness/{row['probe']}": row["sharpness"]} if row.get("sharpness") is not None else {}
            else:
                values = {f"gn/{k}": row[k] for k in _GN_REPORTED if row.get(k) is not None}
            if values:
                yield int(step), {k: float(v) for k, v in values.items()}


def sync(layout: ResultsLayout, tracker: Tracker, experiment: str) -> SyncSummary:
    """Make the store agree with the records (see the module docstring)."""
    planned = layout.read_plan() or sorted(p.name for p in layout.trials_dir.glob("*") if p.is_dir())
    summary = SyncSummary()
    sweep_run = tracker.start_sweep(experiment, tags={"trials": str(len(planned)), "sweep_dir": str(layout.sweep_dir)})
    done = []
    for trial_id in planned:
        mark = layout.done_mark(trial_id)
        if not mark.is_file():
            summary.missing.append(trial_id)
            continue
        trial = Trial.model_validate(json.loads(mark.read_text()))
        run = sweep_run.start_trial(trial)
        before = run.metrics_logged
        run.log_all(metric_points(layout.records_dir(trial_id)))
        run.log_artifacts(sorted(layout.records_dir(trial_id).glob("*.parquet")), "records")
        run.end("FINISHED")
        summary.metrics += run.metrics_logged - before
        summary.trials += 1
        done.append(trial_id)
    summary.stale = sweep_run.close_stale(done, "ended by sync-mlflow: the trial has no records")
    summary.report_files = sweep_run.log_report(layout)
    if summary.missing:
        sweep_run.end("FAILED", f"{len(summary.missing)} of {len(planned)} planned trials have no records")
    else:
        sweep_run.end("FINISHED")
    return summary
