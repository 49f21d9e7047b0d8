"""The sweep: checks, then a Ray Tune grid whose trials each run one experiment, then the aggregate stage.

The only module that imports Ray. `run_trial` is the plain function a trial runs (experiment ->
Parquet records -> MLflow child run); it runs without Ray too (tests, benchmarks).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune

from pipeline import tracking
from pipeline.config import ConfigError, SweepConfig, expand, optimizer_label

Log = Callable[[str], None]
# Trials forward their step metrics to Ray Tune at most this often (MLflow gets them all, in
# batches): Tune only shows progress, and each report waits for the driver to take it.
TUNE_REPORT_SECONDS = 5.0
DONE_MARK = "trial.json"  # written last, when the records are complete
ERROR_FILE = "error.txt"  # the traceback of a failed trial
# Tune logs every failed trial's traceback (and a summary) at ERROR; we print one line per failure
# and keep the traceback in the trial's folder.
_QUIET_LOGGERS = ("ray.tune.execution.tune_controller", "ray.tune.tune")


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep will do, decided before anything starts."""

    config: SweepConfig
    sweep_dir: Path
    tracking_uri: str
    trials: list[dict[str, Any]]  # still to run
    done: list[str]  # trial ids finished by an earlier run of this sweep, with the same trial dict


@dataclass
class SweepOutcome:
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # trial id -> the error's last line
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # trial id -> run_trial's summary
    outputs: dict[str, Path] = field(default_factory=dict)  # what the aggregate stage wrote
    aggregate_error: str | None = None
    seconds: float = 0.0  # the whole run, aggregate stage included
    aggregate_seconds: float = 0.0


def _jsonable(trial: dict[str, Any]) -> Any:
    return json.loads(json.dumps(trial, sort_keys=True))


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


def prepare(config: SweepConfig) -> SweepPlan:
    """Check the results directory and what earlier runs of this sweep left; no side effects.

    A trial whose directory holds the done mark with the same trial dict is skipped (a re-run
    resumes); one with a different trial dict would mix two configs in one sweep: ConfigError.
    """
    sweep_dir = config.sweep_dir
    _check_writable(sweep_dir)
    todo, done = [], []
    for trial in expand(config):
        mark = sweep_dir / "trials" / trial["trial_id"] / DONE_MARK
        if not mark.is_file():
            todo.append(trial)
            continue
        try:
            earlier = json.loads(mark.read_text())
        except (OSError, ValueError):
            earlier = None
        if earlier != _jsonable(trial):
            raise ConfigError(
                f"name: {sweep_dir} already holds trial {trial['trial_id']} with a different config; "
                "choose another name (name=...) or remove that directory"
            )
        done.append(trial["trial_id"])
    return SweepPlan(config, sweep_dir, tracking.resolve_tracking_uri(config.tracking_uri), todo, done)


def run_trial(
    trial: dict[str, Any],
    trial_dir: Path,
    target: tracking.TrackingTarget,
    *,
    on_report: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """One trial: the experiment, its Parquet records, its MLflow child run. Returns timings."""
    from pipeline.experiments import EXPERIMENTS
    from pipeline.records import write_trial_records

    start = time.perf_counter()
    trial_dir = Path(trial_dir)
    # Only an unfinished trial (no done mark) is re-run: what an earlier attempt left goes.
    shutil.rmtree(trial_dir / "records", ignore_errors=True)
    (trial_dir / ERROR_FILE).unlink(missing_ok=True)
    label = optimizer_label(trial["algorithm"], trial["clip_fraction"], trial["clip_target"])
    run = tracking.TrialRun(target, trial, trajectory=label)

    def report(step: int, metrics: dict[str, float]) -> None:
        run.log(step, metrics)
        if on_report is not None:
            on_report(step, metrics)

    try:
        records = EXPERIMENTS[trial["experiment"]](trial, report)
        paths = write_trial_records(trial_dir, trial, records)
        run.log_artifacts(paths, "records")
        figures = sorted((trial_dir / "figures").glob("*.png"))
        run.log_artifacts(figures, "figures")
        mark = trial_dir / DONE_MARK
        mark.with_suffix(".tmp").write_text(json.dumps(trial, sort_keys=True, indent=1))
        mark.with_suffix(".tmp").replace(mark)
    except BaseException:
        trial_dir.mkdir(parents=True, exist_ok=True)
        (trial_dir / ERROR_FILE).write_text(traceback.format_exc())
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


def _trainable(config: dict[str, Any], *, trials: dict[str, dict], target: tracking.TrackingTarget,
               sweep_dir: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # the trial's CPU share, not every core of the node
    trial = trials[config["trial_id"]]
    last = [0.0]

    def forward(step: int, metrics: dict[str, float]) -> None:
        if time.monotonic() - last[0] >= TUNE_REPORT_SECONDS:
            last[0] = time.monotonic()
            tune.report({"step": step, **metrics})

    summary = run_trial(trial, Path(sweep_dir) / "trials" / trial["trial_id"], target, on_report=forward)
    tune.report({"done": 1, **summary})


class _Progress(tune.Callback):
    """One line per trial start, finish and failure instead of Tune's tables."""

    def __init__(self, log: Log, total: int, already: int) -> None:
        self.log, self.total, self.count = log, total, already

    def on_trial_start(self, iteration, trials, trial, **info):
        self.log(f"[{self.count}/{self.total}] started  {trial.config['trial_id']}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.count += 1
        seconds = (trial.last_result or {}).get("trial_seconds", float("nan"))
        self.log(f"[{self.count}/{self.total}] finished {trial.config['trial_id']} ({seconds:.0f} s)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.count += 1
        self.log(f"[{self.count}/{self.total}] FAILED   {trial.config['trial_id']}")


def _error_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


@contextlib.contextmanager
def _ray_session(config: SweepConfig) -> Iterator[None]:
    """Joins the running Ray (tests, `ray.address`) or starts a local one and stops it after."""
    started = not ray.is_initialized()
    if started:
        local = config.ray.address is None
        ray.init(
            address=config.ray.address,
            num_cpus=config.ray.num_cpus if local else None,
            include_dashboard=False,
            # Trials do not print; their logs stay in Ray's session directory, our lines say what ran.
            log_to_driver=False,
            configure_logging=True,
            logging_level=logging.WARNING,
        )
    levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if started:
            ray.shutdown()


def run(plan: SweepPlan, *, log: Log = lambda line: None) -> SweepOutcome:
    """Run the planned trials on Ray Tune, logging to MLflow, then the aggregate stage."""
    from pipeline.aggregate import aggregate

    config, outcome, start = plan.config, SweepOutcome(), time.perf_counter()
    total = len(plan.trials) + len(plan.done)
    if plan.done:
        log(f"{len(plan.done)} of {total} trials already finished in {plan.sweep_dir}: skipped")
    if plan.trials:
        # The store, the experiment and the parent run exist before any trial starts.
        target = tracking.start_sweep(
            plan.tracking_uri, config.name, description=config.description,
            tags={"trials": str(len(plan.trials)), "sweep_dir": str(plan.sweep_dir)},
        )
        status = "KILLED"  # unless the fit returns
        try:
            with _ray_session(config):
                results = _fit(plan, target, log, total)
            for result in results:
                trial_id = result.config["trial_id"]
                if result.error is None:
                    outcome.finished.append(trial_id)
                    outcome.results[trial_id] = dict(result.metrics or {})
                    continue
                error_file = plan.sweep_dir / "trials" / trial_id / ERROR_FILE
                where = f" (traceback: {error_file})" if error_file.is_file() else ""
                outcome.failed[trial_id] = _error_line(result.error) + where
            status = "FAILED" if outcome.failed else "FINISHED"
        finally:
            tracking.end_run(plan.tracking_uri, target.parent_run_id, status)
    aggregate_start = time.perf_counter()
    try:
        outcome.outputs = aggregate(plan.sweep_dir)
    except ValueError as err:
        outcome.aggregate_error = str(err)
    outcome.aggregate_seconds = time.perf_counter() - aggregate_start
    outcome.seconds = time.perf_counter() - start
    return outcome


def _fit(plan: SweepPlan, target: tracking.TrackingTarget, log: Log, total: int) -> tune.ResultGrid:
    config = plan.config
    resources = config.resources_per_trial
    # Tune's newer console output prints its config table and TensorBoard hints even at
    # verbose=0; the classic one stays quiet, and _Progress says what happens.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    trainable = tune.with_parameters(
        _trainable,
        trials={t["trial_id"]: t for t in plan.trials},
        target=target,
        sweep_dir=str(plan.sweep_dir),
        threads=max(1, int(resources.cpu)),
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": resources.cpu, "gpu": resources.gpu}),
        param_space={"trial_id": tune.grid_search([t["trial_id"] for t in plan.trials])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=config.ray.max_concurrent_trials,
            # One worker process serves trial after trial: torch and the data load once per worker.
            reuse_actors=True,
            trial_name_creator=lambda trial: trial.config["trial_id"],
            trial_dirname_creator=lambda trial: trial.config["trial_id"],
        ),
        run_config=tune.RunConfig(
            # Ray's own state, apart from our records; a fresh folder per invocation.
            name=time.strftime("%Y%m%d-%H%M%S"),
            storage_path=str(plan.sweep_dir / "ray"),
            verbose=0,
            callbacks=[_Progress(log, total, len(plan.done))],
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    return tuner.fit()
