"""The single writer of a sweep's results: trial records, done marks, error files and the trials'
tracking runs. On Ray it runs as an actor on the driver's node (pipeline.sweep), so that trials on
any node send their records and metrics there and never write to their own node's disk or store;
without Ray (tests, benchmarks) it is called directly.

Tracking is never on the critical path: the first tracking call that fails (a server down or too
slow: MLflow's HTTP timeouts are seconds, pipeline.tracking.HTTP_ENV) is remembered, tracking stops
for the rest of the sweep, and the records, done marks and error files are written as ever; the
sweep then says that tracking failed and `python -m pipeline sync-mlflow` repairs the store."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from pipeline.atomic import atomic_write_bytes, atomic_write_text
from pipeline.config import Trial
from pipeline.layout import ResultsLayout
from pipeline.records import write_encoded_records
from pipeline.tracking import SweepRun, TrialRun, first_line

Point = tuple[int, Mapping[str, float]]
T = TypeVar("T")


class ResultsSink:
    """Writes what trials send: `start`, then `log` (metric points) and `save_checkpoint` any number
    of times, then `finish` (the encoded records; the done mark last) or `fail` (the traceback).

    Retries: an attempt whose process died is followed by another `start` of the same trial, which
    fetches the last checkpoint with `load_checkpoint` and resumes there. The checkpoint lives on
    this node's disk (trials/<id>/checkpoint.pt), so an attempt on any node reads it, and it
    outlives the sweep process (a re-run resumes there too); the done mark deletes it.
    """

    def __init__(self, layout: ResultsLayout, sweep_run: SweepRun, max_failures: int = 0) -> None:
        self.layout = layout
        self.sweep_run = sweep_run
        self.max_failures = max_failures  # Tune's: a trial's k-th failed attempt is retried while k <= this
        self._runs: dict[str, TrialRun] = {}
        self._attempts: dict[str, int] = {}
        # trial id -> the last step whose metrics were logged: a resumed attempt re-sends the steps
        # from its checkpoint on, and those that had arrived before the kill are not logged twice.
        self._logged: dict[str, int] = {}
        self.tracking_error: str | None = None  # the first tracking failure; tracking stops there

    def _track(self, call: Callable[..., T], *args: Any) -> T | None:
        """A tracking call, unless tracking has failed; its failure is kept, never raised."""
        if self.tracking_error is not None:
            return None
        try:
            return call(*args)
        except Exception as err:
            self.tracking_error = f"{type(err).__name__}: {first_line(err)}"
            self._runs.clear()
            return None

    def tracking_failure(self) -> str | None:
        return self.tracking_error

    def start(self, trial: Trial) -> str | None:
        """A trial (or an attempt) begins: records and errors of an earlier, unfinished attempt go
        (its checkpoint stays); the tracking run starts, or goes on where an attempt died (a retried
        trial keeps its run: the sweep run finds it by trial id). Returns the run's id, which the
        trial records in `trials` (None: no run, or tracking has failed)."""
        shutil.rmtree(self.layout.records_dir(trial.trial_id), ignore_errors=True)
        self.layout.error_file(trial.trial_id).unlink(missing_ok=True)
        self._attempts[trial.trial_id] = self._attempts.get(trial.trial_id, 0) + 1
        if trial.trial_id not in self._runs:
            run = self._track(self.sweep_run.start_trial, trial)
            if run is not None:
                self._runs[trial.trial_id] = run
        run = self._runs.get(trial.trial_id)
        return getattr(run, "run_id", None) if run is not None else None

    def log(self, trial_id: str, points: Sequence[Point]) -> None:
        run = self._runs.get(trial_id)
        for step, metrics in points if run is not None else ():
            if step > self._logged.get(trial_id, -1):
                self._track(run.log, step, metrics)
                self._logged[trial_id] = step

    def save_checkpoint(self, trial_id: str, payload: bytes) -> None:
        """The trial's latest state replaces its previous checkpoint, atomically."""
        atomic_write_bytes(self.layout.checkpoint_file(trial_id), payload)

    def load_checkpoint(self, trial_id: str) -> bytes | None:
        """The trial's last checkpoint, if an earlier attempt left one."""
        try:
            return self.layout.checkpoint_file(trial_id).read_bytes()
        except FileNotFoundError:
            return None

    def finish(self, trial: Trial, encoded: Mapping[str, bytes], status: str = "finished") -> dict[str, Any]:
        """The trial's records land, then its done mark; returns the tracking cost.

        `status` is the trial's outcome (finished or diverged): a tag of its run, which ends
        FINISHED either way (the trial ran to its end; what it found is the tag)."""
        paths = write_encoded_records(self.layout.records_dir(trial.trial_id), encoded)
        run = self._runs.pop(trial.trial_id, None)
        if run is not None:
            self._track(run.set_tags, {"status": status})
            self._track(run.log_artifacts, paths, "records")
        atomic_write_text(self.layout.done_mark(trial.trial_id), json.dumps(trial.to_json(), sort_keys=True, indent=1))
        self.layout.checkpoint_file(trial.trial_id).unlink(missing_ok=True)  # done: nothing to resume
        self._logged.pop(trial.trial_id, None)
        self._attempts.pop(trial.trial_id, None)
        if run is not None:
            self._track(run.end, "FINISHED")
        return {"tracking_seconds": run.seconds if run else 0.0, "metrics_logged": run.metrics_logged if run else 0}

    def end_open(self, status: str, reason: str | None = None) -> list[str]:
        """End the runs of trials that never finished nor failed for good (their process died or
        was stopped): `status`, with the reason."""
        ended = sorted(self._runs)
        for trial_id in ended:
            self._track(self._runs.pop(trial_id).end, status, reason)
        return ended

    def fail(self, trial_id: str, text: str) -> None:
        """An attempt failed: its traceback in the error file; the run ends as FAILED unless Tune
        retries the trial (then the next attempt goes on in the same run)."""
        atomic_write_text(self.layout.error_file(trial_id), text)
        if self._attempts.get(trial_id, 0) <= self.max_failures:
            return
        run = self._runs.pop(trial_id, None)
        if run is not None:
            lines = [line for line in text.splitlines() if line.strip()]
            self._track(run.end, "FAILED", lines[-1] if lines else "failed")
