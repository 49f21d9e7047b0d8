"""Tracking: a small interface (Tracker -> SweepRun -> TrialRun) and its MLflow implementation.

The driver opens the tracker and starts the sweep's run before any trial (it creates the store);
the SweepRun is picklable and travels to the trials, which each start one TrialRun. Nothing else in
the package talks to MLflow: another store is another implementation of these three protocols.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from pipeline.redact import mask_uri
from pipeline.tracking_view import experiment_tags, report_artifacts, run_name, trial_tags, view_path

if TYPE_CHECKING:
    from pipeline.config import Trial
    from pipeline.layout import ResultsLayout

T = TypeVar("T")

# MlflowClient.log_batch accepts at most 1000 metrics and 100 params + tags per call.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
# Buffered metrics go out when this many are waiting or this many seconds have passed: each
# log_batch on SQLite costs ~40 ms plus ~0.5 ms per metric (per-call log_metric: ~20 ms).
FLUSH_METRICS = 1000
FLUSH_SECONDS = 10.0
# A metric reported every step is logged at most ~this many times per trial (every `stride`-th
# step, and always its last value): the UI's curves need no more, the Parquet records keep every
# row, and logging cost stays a small fraction of trial time on SQLite (~0.5 ms per metric).
MAX_POINTS_PER_METRIC = 200
# Several trial processes write one SQLite file. MLflow sets SQLite's busy timeout to 20 s; a
# writer that waits longer gets "database is locked" (seen with a lock held 23 s): we retry the
# call up to LOCK_RETRIES times with back-off, each attempt again waiting up to 20 s.
LOCK_RETRIES = 8
# Tracking must never stall a sweep: over HTTP a request gives up after HTTP_TIMEOUT seconds and
# HTTP_RETRIES retries (MLflow's defaults, 120 s and 7 retries with doubling back-off, kept a sweep
# waiting for minutes on a dead server). Set only where the user has not set them.
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
# The tag that finds a trial's run again (a resumed or retried trial reuses it) and the one that
# finds the sweep's parent run (a resumed sweep reuses it); the reason a run did not finish.
TRIAL_TAG = "trial_id"
SWEEP_TAG = "sweep_dir"
REASON_TAG = "end_reason"
_LOCKED = re.compile(r"database is locked|database table is locked|database is busy", re.IGNORECASE)
_METRIC_KEY = re.compile(r"[^A-Za-z0-9_\-. :/]")


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or written: one line naming `tracking_uri`."""


class TrialRun(Protocol):
    """One trial's run: step metrics, artifacts, an end status."""

    seconds: float  # wall time spent in tracking calls
    metrics_logged: int

    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...
    def log_all(self, points: Iterable[tuple[int, Mapping[str, float]]]) -> None: ...
    def log_artifacts(self, paths: Iterable[Path], artifact_path: str) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def end(self, status: str = "FINISHED", reason: str | None = None) -> None: ...


class SweepRun(Protocol):
    """A sweep's run, created by the driver; picklable, so that trials on any node can use it."""

    def start_trial(self, trial: Trial) -> TrialRun: ...
    def close_stale(self, finished: Iterable[str], reason: str) -> dict[str, str]: ...
    def end(self, status: str, reason: str | None = None) -> None: ...
    def log_report(self, layout: ResultsLayout) -> int: ...
    def browse_hint(self) -> str: ...


class Tracker(Protocol):
    """A tracking store."""

    uri: str

    def start_sweep(self, name: str, *, tags: Mapping[str, str], description: str | None = None) -> SweepRun:
        """The sweep's run: the one with the same `sweep_dir` tag when there is one (reopened), else a new one."""
        ...

    def browse_hint(self) -> str: ...


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """An HTTP(S) store's host accepts connections (within `timeout` seconds), checked before
    anything else starts: a closed port or a dead host is a TrackingError at once, not after
    MLflow's retries."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or type(err).__name__)
        raise TrackingError(f"tracking_uri: cannot use {mask_uri(uri)}: cannot connect to {parts.hostname}:{port} "
                            f"({reason} within {timeout:g} s)") from err


def open_tracker(uri: str | None) -> Tracker:
    """The tracker for a config's `tracking_uri` (None: MLflow's own default SQLite store here)."""
    return MlflowTracker(resolve_tracking_uri(uri))


@dataclass(frozen=True)
class MlflowTracker:
    uri: str

    def start_sweep(self, name: str, *, tags: Mapping[str, str], description: str | None = None) -> MlflowSweepRun:
        return start_sweep(self.uri, name, tags=tags, description=description)

    def browse_hint(self) -> str:
        return browse_hint(self.uri)


@dataclass(frozen=True)
class MlflowSweepRun:
    """The sweep's parent run: everything a worker process needs to log its trial under it."""

    uri: str
    experiment_id: str
    parent_run_id: str

    def start_trial(self, trial: Trial) -> MlflowTrialRun:
        return MlflowTrialRun(self, trial)

    def children(self) -> list[Any]:
        """The trial runs under this sweep's run (any status)."""
        mlflow = client(self.uri)
        query = f"tags.{MLFLOW_PARENT_RUN_ID} = '{self.parent_run_id}'"
        runs, token = [], None
        while True:
            page = retry_locked(mlflow.search_runs, [self.experiment_id], query, max_results=1000, page_token=token)
            runs += page
            token = page.token
            if not token:
                return runs

    def close_stale(self, finished: Iterable[str], reason: str) -> dict[str, str]:
        """End the trial runs still RUNNING (their process died): FINISHED for the trials in
        `finished` (their records are complete), else KILLED with `reason`. Returns trial id -> status."""
        done, ended = set(finished), {}
        for run in self.children():
            if run.info.status == "RUNNING":
                trial_id = run.data.tags.get(TRIAL_TAG, run.info.run_id)
                status = "FINISHED" if trial_id in done else "KILLED"
                end_run(self.uri, run.info.run_id, status, None if status == "FINISHED" else reason)
                ended[trial_id] = status
        return ended

    def end(self, status: str, reason: str | None = None) -> None:
        end_run(self.uri, self.parent_run_id, status, reason)

    def log_report(self, layout: ResultsLayout) -> int:
        """The sweep's report files, tables and figures as the parent run's artifacts; returns how many."""
        files = report_artifacts(layout)
        for path, folder in files:
            retry_locked(client(self.uri).log_artifact, self.parent_run_id, os.fspath(path), folder or None)
        return len(files)

    def browse_hint(self) -> str:
        """Where to look: the server's saved trials view, or the command that serves this store."""
        if self.uri.startswith(("http://", "https://")):
            return f"open {self.uri.rstrip('/')}{view_path(self.experiment_id)}"
        return f"{browse_hint(self.uri)}, then open http://127.0.0.1:5000{view_path(self.experiment_id)}"


def end_run(uri: str, run_id: str, status: str, reason: str | None = None) -> None:
    """End a run with `status`; the reason (why it did not finish) as a tag."""
    mlflow = client(uri)
    if reason:
        retry_locked(mlflow.set_tag, run_id, REASON_TAG, reason[:5000])
    retry_locked(mlflow.set_terminated, run_id, status)


def resolve_tracking_uri(uri: str | None, cwd: Path | None = None) -> str:
    """None -> MLflow's own default `sqlite:///mlflow.db`; relative SQLite/file paths made absolute,
    because trials run in other working directories (Ray moves them into their trial dirs)."""
    cwd = Path.cwd() if cwd is None else cwd
    uri = uri or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        return uri if path in ("", ":memory:") or path.startswith("/") else f"sqlite:///{cwd / path}"
    if "://" not in uri and not uri.startswith(("databricks", "file:")):
        return str((cwd / uri).expanduser().absolute())
    return uri


def artifact_location(uri: str, name: str) -> str | None:
    """Beside a SQLite store, <db dir>/mlruns/<experiment>: MLflow's default is ./mlruns of whichever
    working directory first creates the experiment. None (the server's choice) for other stores."""
    path = uri.removeprefix("sqlite:///")
    if not uri.startswith("sqlite:///") or path in ("", ":memory:"):
        return None
    return (Path(path).parent / "mlruns" / name).as_uri()


def browse_hint(uri: str) -> str:
    """The command (or address) that shows the runs of this store."""
    shown = mask_uri(uri)  # printed and kept in logs: no credentials
    if uri.startswith(("http://", "https://")):
        return f"open {shown} in a browser"
    return f"mlflow ui --backend-store-uri {shown}"


def retry_locked(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run an MLflow call, retrying while another process holds the SQLite write lock."""
    for attempt in range(LOCK_RETRIES + 1):
        try:
            return call(*args, **kwargs)
        except Exception as err:  # MlflowException or sqlalchemy's OperationalError, by message
            if attempt == LOCK_RETRIES or not _LOCKED.search(str(err)):
                raise
            time.sleep(min(0.05 * 2**attempt, 5.0))
    raise AssertionError("unreachable")


@functools.lru_cache(maxsize=4)
def client(uri: str) -> MlflowClient:
    """One client per process and store: the first one on a SQLite file builds the schema."""
    for name in ("alembic", "mlflow.store.db.utils"):  # schema-migration chatter at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    for key, value in HTTP_ENV.items():  # read by MLflow at each request, in this process
        os.environ.setdefault(key, value)
    return MlflowClient(tracking_uri=uri)


def start_sweep(uri: str, name: str, *, tags: Mapping[str, str], description: str | None = None) -> MlflowSweepRun:
    """Driver side, before any trial: create the store (SQLite schema creation races between
    trial processes: "duplicate column name: step"), the experiment and the sweep's parent run."""
    try:
        mlflow = retry_locked(client, uri)
        experiment = retry_locked(mlflow.get_experiment_by_name, name)
        if experiment is None:
            experiment_id = retry_locked(mlflow.create_experiment, name, artifact_location=artifact_location(uri, name))
        else:
            experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage == "deleted":  # deleted in the UI: its name is still taken
                retry_locked(mlflow.restore_experiment, experiment_id)
        for key, value in experiment_tags().items():
            retry_locked(mlflow.set_experiment_tag, experiment_id, key, value)
        run_tags = {MLFLOW_RUN_NAME: name, "sweep": name, **tags}
        if description:
            run_tags["mlflow.note.content"] = description
        earlier = _find_parent(mlflow, experiment_id, tags.get(SWEEP_TAG))
        if earlier is not None:  # a resumed sweep: its run again, RUNNING until this invocation ends
            run_id = earlier.info.run_id
            retry_locked(mlflow.update_run, run_id, status="RUNNING")
            if REASON_TAG in earlier.data.tags:
                retry_locked(mlflow.delete_tag, run_id, REASON_TAG)
            for key, value in run_tags.items():
                if earlier.data.tags.get(key) != value:
                    retry_locked(mlflow.set_tag, run_id, key, value)
        else:
            run_id = retry_locked(mlflow.create_run, experiment_id, run_name=name, tags=run_tags).info.run_id
    except Exception as err:
        raise TrackingError(f"tracking_uri: cannot use {mask_uri(uri)}: {first_line(err)}") from err
    return MlflowSweepRun(uri, experiment_id, run_id)


def first_line(err: BaseException) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def _find_parent(mlflow: MlflowClient, experiment_id: str, sweep_dir: str | None) -> Any:
    """The earliest sweep run (no parent) tagged with this sweep directory, or None."""
    if not sweep_dir:
        return None
    query = f"tags.{SWEEP_TAG} = '{_quoted(sweep_dir)}'"
    runs = retry_locked(mlflow.search_runs, [experiment_id], query, max_results=100, order_by=["start_time ASC"])
    return next((r for r in runs if MLFLOW_PARENT_RUN_ID not in r.data.tags), None)


def _quoted(value: str) -> str:
    """A value inside a search filter's single quotes."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dict -> {"a.b": "value"}; lists stay whole ("[0, 10, 20]")."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


class MetricStride:
    """Decides which reported values to log: a key's value goes out when `stride` steps have
    passed since that key was last logged, so sparse metrics (measurement points) always do."""

    def __init__(self, steps: int, max_points: int = MAX_POINTS_PER_METRIC) -> None:
        self.stride = max(1, math.ceil(steps / max_points))
        self._last: dict[str, int] = {}
        self._held: dict[str, tuple[int, float]] = {}

    def select(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        chosen = {}
        for key, value in metrics.items():
            if key in self._last and step - self._last[key] < self.stride:
                self._held[key] = (step, value)  # logged at the end if nothing later replaces it
                continue
            self._last[key] = step
            self._held.pop(key, None)
            chosen[key] = value
        return chosen

    def leftovers(self) -> dict[str, tuple[int, float]]:
        """The last value of each key that was held back, so that every curve ends where it ended."""
        held, self._held = self._held, {}
        return held


class MlflowTrialRun:
    """One trial's child run: tags and params at creation, step metrics in batches, artifacts.

    A trial has one run for the life of its sweep: a resumed or retried trial finds its run again
    (by its trial id under the sweep's run) and logs only the steps that run does not hold yet, so
    a step's metric is never logged twice. `seconds` adds up the wall time spent in MLflow calls
    (benchmarks/bench_sweep.py reports it as a fraction of trial time).
    """

    def __init__(self, sweep: MlflowSweepRun, trial: Trial) -> None:
        self.seconds = 0.0
        self.metrics_logged = 0
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()
        self._stride = MetricStride(max(trial.steps, 1))
        self._uri = sweep.uri
        self._client = self._timed(client, sweep.uri)
        query = (f"tags.{MLFLOW_PARENT_RUN_ID} = '{sweep.parent_run_id}' "
                 f"and tags.{TRIAL_TAG} = '{_quoted(trial.trial_id)}'")
        earlier = self._timed(self._client.search_runs, [sweep.experiment_id], query, max_results=10,
                              order_by=["start_time ASC"])
        # The last step logged per metric key: later points only (a resumed trial repeats steps).
        self._logged: dict[str, int] = {}
        self.reused = bool(earlier)
        if earlier:
            run = earlier[0]
            self.run_id = run.info.run_id
            self._logged = {m.key: m.step for m in run.data._metric_objs}
            if run.info.status != "RUNNING":
                self._timed(self._client.update_run, self.run_id, status="RUNNING")
            if REASON_TAG in run.data.tags:
                self._timed(self._client.delete_tag, self.run_id, REASON_TAG)
            if run.data.params:
                return
        else:
            name = run_name(trial)
            tags = {MLFLOW_PARENT_RUN_ID: sweep.parent_run_id, MLFLOW_RUN_NAME: name, **trial_tags(trial)}
            run = self._timed(self._client.create_run, sweep.experiment_id, run_name=name, tags=tags)
            self.run_id = run.info.run_id
        params = [Param(k, v[:6000]) for k, v in flatten(trial.params()).items()]  # MLflow caps values at 6000
        for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self._timed(self._client.log_batch, self.run_id, params=params[start : start + MAX_PARAMS_PER_BATCH])

    def _timed(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        start = time.perf_counter()
        try:
            return retry_locked(call, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def _buffer(self, step: int, metrics: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        for name, value in metrics.items():
            key = _METRIC_KEY.sub("_", name)
            if step <= self._logged.get(key, -1):
                continue
            self._logged[key] = int(step)
            self._pending.append(Metric(key, float(value), now, int(step)))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Buffer one step's metrics; flushed in batches (every FLUSH_METRICS or FLUSH_SECONDS)."""
        self._buffer(step, self._stride.select(step, metrics))
        if len(self._pending) >= FLUSH_METRICS or time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def log_all(self, points: Iterable[tuple[int, Mapping[str, float]]]) -> None:
        """Every point given (no stride): what `sync-mlflow` re-sends from the records."""
        for step, metrics in sorted(points, key=lambda point: point[0]):
            self._buffer(step, metrics)
        self.flush()

    def flush(self) -> None:
        for start in range(0, len(self._pending), MAX_METRICS_PER_BATCH):
            batch = self._pending[start : start + MAX_METRICS_PER_BATCH]
            self._timed(self._client.log_batch, self.run_id, metrics=batch)
        self.metrics_logged += len(self._pending)
        self._pending = []
        self._last_flush = time.monotonic()

    def log_artifacts(self, paths: Iterable[Path], artifact_path: str) -> None:
        """Each file once: one already in the run (an earlier attempt sent it) is not sent again."""
        paths = list(paths)
        there = set()
        if self.reused and paths:
            there = {a.path for a in self._timed(self._client.list_artifacts, self.run_id, artifact_path)}
        for path in paths:
            if f"{artifact_path}/{path.name}" not in there:
                self._timed(self._client.log_artifact, self.run_id, os.fspath(path), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Tags set once the trial has run (its outcome: `status` finished or diverged)."""
        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        self._timed(self._client.log_batch, self.run_id, tags=batch)

    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        for key, (step, value) in self._stride.leftovers().items():
            self._buffer(step, {key: value})
        self.flush()
        self._timed(end_run, self._uri, self.run_id, status, reason)
