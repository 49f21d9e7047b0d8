"""Running trials without Ray: the sweep's plan (what is done, what is left), and one trial end to end
(the experiment, its Parquet records, its tracking run, the done mark or the error file)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_write_text
from pipeline.config import ConfigError, SweepConfig, Trial
from pipeline.layout import ResultsLayout
from pipeline.tracking import SweepRun, Tracker, open_tracker


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep will do, decided before anything starts."""

    config: SweepConfig
    layout: ResultsLayout
    tracker: Tracker
    trials: list[Trial]  # still to run
    done: list[str]  # trial ids finished by an earlier run of this sweep, with the same settings

    @property
    def total(self) -> int:
        return len(self.trials) + len(self.done)


def _check_writable(path: Path) -> None:
    """The sweep directory can be created and written, checked without creating or touching it."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"results_dir: cannot create {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"results_dir: {probe} is not writable (needed for {path})")
    trials = path / "trials"
    if trials.exists() and not os.access(trials, os.W_OK | os.X_OK):
        raise ConfigError(f"results_dir: {trials} is not writable")


def plan_sweep(config: SweepConfig) -> SweepPlan:
    """Check the results directory and what earlier runs of this sweep left; no side effects.

    A trial whose directory holds the done mark with the same settings is skipped (a re-run
    resumes); one with different settings would mix two configs in one sweep: ConfigError.
    """
    layout = config.layout
    _check_writable(layout.sweep_dir)
    todo, done = [], []
    for trial in config.trials:
        mark = layout.done_mark(trial.trial_id)
        if not mark.is_file():
            todo.append(trial)
            continue
        try:
            earlier = json.loads(mark.read_text())
        except (OSError, ValueError):
            earlier = None
        if earlier != trial.to_json():
            raise ConfigError(
                f"name: {layout.sweep_dir} already holds trial {trial.trial_id} with a different config; "
                "choose another name (name=...) or remove that directory"
            )
        done.append(trial.trial_id)
    return SweepPlan(config, layout, open_tracker(config.tracking_uri), todo, done)


def run_trial(
    trial: Trial,
    layout: ResultsLayout,
    sweep_run: SweepRun,
    *,
    on_report: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """One trial: the experiment, its Parquet records, its tracking run. Returns timings."""
    from pipeline.experiments import EXPERIMENTS
    from pipeline.records import write_trial_records

    start = time.perf_counter()
    # Only an unfinished trial (no done mark) is re-run: what an earlier attempt left goes.
    shutil.rmtree(layout.records_dir(trial.trial_id), ignore_errors=True)
    layout.error_file(trial.trial_id).unlink(missing_ok=True)
    run = sweep_run.start_trial(trial)

    def report(step: int, metrics: dict[str, float]) -> None:
        run.log(step, metrics)
        if on_report is not None:
            on_report(step, metrics)

    try:
        records = EXPERIMENTS[trial.experiment](trial, report)
        paths = write_trial_records(layout.records_dir(trial.trial_id), trial.identity(), records)
        run.log_artifacts(paths, "records")
        atomic_write_text(layout.done_mark(trial.trial_id), json.dumps(trial.to_json(), sort_keys=True, indent=1))
    except BaseException:
        atomic_write_text(layout.error_file(trial.trial_id), traceback.format_exc())
        with contextlib.suppress(Exception):  # the experiment's error is the one to report
            run.end("FAILED")
        raise
    run.end("FINISHED")
    return {
        "trial_seconds": time.perf_counter() - start,
        "tracking_seconds": run.seconds,
        "metrics_logged": run.metrics_logged,
        "rows": sum(len(rows) for rows in records.values()),
    }
