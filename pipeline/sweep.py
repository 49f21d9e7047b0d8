"""The Ray adapter: a sweep plan's trials as a Ray Tune grid, each running pipeline.runner.run_trial.

The only module that imports Ray. Planning, the trial itself, the records and tracking are all
Ray-free (pipeline.runner); the caller runs the aggregate stage and the report afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import tune

from pipeline.config import SweepConfig, Trial
from pipeline.layout import ResultsLayout
from pipeline.runner import SweepPlan, run_trial
from pipeline.tracking import SweepRun

Log = Callable[[str], None]
# Trials forward their step metrics to Ray Tune at most this often (the tracker gets them all, in
# batches): Tune only shows progress, and each report waits for the driver to take it.
TUNE_REPORT_SECONDS = 5.0
# Tune logs every failed trial's traceback (and a summary) at ERROR; we print one line per failure
# and keep the traceback in the trial's folder.
_QUIET_LOGGERS = ("ray.tune.execution.tune_controller", "ray.tune.tune")


@dataclass
class SweepOutcome:
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # trial id -> the error's last line
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # trial id -> run_trial's summary
    seconds: float = 0.0


def _trainable(config: dict[str, Any], *, trials: dict[str, Trial], sweep_run: SweepRun,
               layout: ResultsLayout, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # the trial's CPU share, not every core of the node
    trial = trials[config["trial_id"]]
    last = [0.0]

    def forward(step: int, metrics: dict[str, float]) -> None:
        if time.monotonic() - last[0] >= TUNE_REPORT_SECONDS:
            last[0] = time.monotonic()
            tune.report({"step": step, **metrics})

    summary = run_trial(trial, layout, sweep_run, on_report=forward)
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
    """Run the planned trials on Ray Tune, each logging to the plan's tracker."""
    config, outcome, start = plan.config, SweepOutcome(), time.perf_counter()
    if plan.done:
        log(f"{len(plan.done)} of {plan.total} trials already finished in {plan.layout.sweep_dir}: skipped")
    if plan.trials:
        # The store, the experiment and the parent run exist before any trial starts.
        sweep_run = plan.tracker.start_sweep(
            config.name, description=config.description,
            tags={"trials": str(len(plan.trials)), "sweep_dir": str(plan.layout.sweep_dir)},
        )
        status = "KILLED"  # unless the fit returns
        try:
            with _ray_session(config):
                results = _fit(plan, sweep_run, log)
            for result in results:
                trial_id = result.config["trial_id"]
                if result.error is None:
                    outcome.finished.append(trial_id)
                    outcome.results[trial_id] = dict(result.metrics or {})
                    continue
                error_file = plan.layout.error_file(trial_id)
                where = f" (traceback: {error_file})" if error_file.is_file() else ""
                outcome.failed[trial_id] = _error_line(result.error) + where
            status = "FAILED" if outcome.failed else "FINISHED"
        finally:
            sweep_run.end(status)
    outcome.seconds = time.perf_counter() - start
    return outcome


def _fit(plan: SweepPlan, sweep_run: SweepRun, log: Log) -> tune.ResultGrid:
    config = plan.config
    resources = config.resources_per_trial
    # Tune's newer console output prints its config table and TensorBoard hints even at
    # verbose=0; the classic one stays quiet, and _Progress says what happens.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    trainable = tune.with_parameters(
        _trainable,
        trials={t.trial_id: t for t in plan.trials},
        sweep_run=sweep_run,
        layout=plan.layout,
        threads=max(1, int(resources.cpu)),
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": resources.cpu, "gpu": resources.gpu}),
        param_space={"trial_id": tune.grid_search([t.trial_id for t in plan.trials])},
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
            storage_path=str(plan.layout.ray_dir),
            verbose=0,
            callbacks=[_Progress(log, plan.total, len(plan.done))],
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    return tuner.fit()
