"""The single writer of a sweep's results: trial records, done marks, error files and the trials'
tracking runs. On Ray it runs as an actor on the driver's node (pipeline.sweep), so that trials on
any node send their records and metrics there and never write to their own node's disk or store;
without Ray (tests, benchmarks) it is called directly."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.atomic import atomic_write_text
from pipeline.config import Trial
from pipeline.layout import ResultsLayout
from pipeline.records import write_encoded_records
from pipeline.tracking import SweepRun, TrialRun

Point = tuple[int, Mapping[str, float]]


class ResultsSink:
    """Writes what trials send: `start`, then `log` (metric points) any number of times, then
    `finish` (the encoded records; the done mark last) or `fail` (the traceback)."""

    def __init__(self, layout: ResultsLayout, sweep_run: SweepRun) -> None:
        self.layout = layout
        self.sweep_run = sweep_run
        self._runs: dict[str, TrialRun] = {}

    def start(self, trial: Trial) -> str | None:
        """A trial begins: what an earlier, unfinished attempt left goes; its tracking run starts.
        Returns the run's id (None when the tracker has none), which the trial records in `trials`."""
        shutil.rmtree(self.layout.records_dir(trial.trial_id), ignore_errors=True)
        self.layout.error_file(trial.trial_id).unlink(missing_ok=True)
        run = self._runs[trial.trial_id] = self.sweep_run.start_trial(trial)
        return getattr(run, "run_id", None)

    def log(self, trial_id: str, points: Sequence[Point]) -> None:
        run = self._runs[trial_id]
        for step, metrics in points:
            run.log(step, metrics)

    def finish(self, trial: Trial, encoded: Mapping[str, bytes], status: str = "finished") -> dict[str, Any]:
        """The trial's records land, then its done mark; returns the tracking cost.

        `status` is the trial's outcome (finished or diverged): a tag of its run, which ends
        FINISHED either way (the trial ran to its end; what it found is the tag)."""
        paths = write_encoded_records(self.layout.records_dir(trial.trial_id), encoded)
        run = self._runs.pop(trial.trial_id)
        run.set_tags({"status": status})
        run.log_artifacts(paths, "records")
        atomic_write_text(self.layout.done_mark(trial.trial_id), json.dumps(trial.to_json(), sort_keys=True, indent=1))
        run.end("FINISHED")
        return {"tracking_seconds": run.seconds, "metrics_logged": run.metrics_logged}

    def end_open(self, status: str) -> list[str]:
        """End the runs of trials that never finished nor failed (their process died): `status`."""
        ended = sorted(self._runs)
        for trial_id in ended:
            self._runs.pop(trial_id).end(status)
        return ended

    def fail(self, trial_id: str, text: str) -> None:
        """The trial failed: its traceback in the error file, its run ended as FAILED."""
        atomic_write_text(self.layout.error_file(trial_id), text)
        run = self._runs.pop(trial_id, None)
        if run is not None:
            run.end("FAILED")
