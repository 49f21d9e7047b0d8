"""The Ray adapter: a sweep plan's trials as a Ray Tune grid, each running pipeline.runner.run_trial.

The only module that imports Ray. Planning, the trial itself, the records and tracking are all
Ray-free (pipeline.runner, pipeline.sink); the caller runs the aggregate stage and the report.

Records and tracking on a cluster: the results sink (pipeline.sink.ResultsSink) runs as a Ray actor
pinned to the driver's node, and is the only writer of `results_dir` and of the tracking store.
Trials on any node send their metrics and their encoded records to it through Ray, so no shared
filesystem is needed and no worker ever writes a node-local store; a trial counts as finished
only once its done mark is in the driver's results directory.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import tune

from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.atomic import atomic_write_text
from pipeline.config import ConfigError, SweepConfig, Trial
from pipeline.interrupts import StopSignals
from pipeline.labels import EXPERIMENT_TABLES
from pipeline.layout import ResultsLayout
from pipeline.preflight import check_cluster_resources
from pipeline.progress import Progress
from pipeline.runner import SweepPlan, run_trial
from pipeline.sink import ResultsSink
from pipeline.redact import mask_uri

Log = Callable[[str], None]
# Trials forward their step metrics to Ray Tune at most this often, and each change of phase at once
# (the tracker gets them all, in batches): Tune only feeds the progress lines, and each report waits
# for the driver to take it.
TUNE_REPORT_SECONDS = 2.0
# Tune logs every failed trial's traceback (and a summary) at ERROR; we print one line per failure
# and keep the traceback in the trial's folder. Ray warns at every local start that token
# authentication is on (its default): not news for a sweep. `--verbose` keeps both.
_QUIET_LOGGERS = ("ray.tune.execution.tune_controller", "ray.tune.tune",
                  "ray._private.authentication.authentication_token_setup",
                  # After an interrupt it warns about trials that never started (no results): they resume.
                  "ray.tune.analysis.experiment_analysis")


@dataclass
class SweepOutcome:
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # trial id -> the error's last line
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # trial id -> run_trial's summary
    seconds: float = 0.0
    interrupted: list[str] = field(default_factory=list)  # stopped by SIGINT / SIGTERM: they resume
    signal: int | None = None  # the stop signal that ended the sweep early
    tracking_error: str | None = None  # the first tracking failure (the records are complete regardless)
    sweep_run: Any = None  # the tracking store's sweep run (pipeline.tracking.SweepRun), when trials ran


class RemoteSink:
    """A trial's handle on the results sink actor (same methods as ResultsSink, called through Ray)."""

    def __init__(self, actor: ray.actor.ActorHandle) -> None:
        self.actor = actor

    def start(self, trial: Trial) -> str | None:
        return ray.get(self.actor.start.remote(trial))

    def log(self, trial_id: str, points: list[tuple[int, dict[str, float]]]) -> None:
        # Not waited for: a slow tracking store must not slow the trial (the actor runs one
        # caller's calls in order, so `finish` still comes after every `log`).
        self.actor.log.remote(trial_id, points)

    def save_checkpoint(self, trial_id: str, payload: bytes) -> None:
        ray.get(self.actor.save_checkpoint.remote(trial_id, payload))

    def load_checkpoint(self, trial_id: str) -> bytes | None:
        return ray.get(self.actor.load_checkpoint.remote(trial_id))

    def finish(self, trial: Trial, encoded: dict[str, bytes], status: str = "finished") -> dict[str, Any]:
        return ray.get(self.actor.finish.remote(trial, encoded, status))

    def fail(self, trial_id: str, text: str) -> None:
        ray.get(self.actor.fail.remote(trial_id, text))


def write_tracking_file(layout: ResultsLayout, uri: str, experiment: str) -> None:
    """Where the sweep's runs are (read by `sync-mlflow`); a URI's password is masked."""
    text = json.dumps({"tracking_uri": mask_uri(uri), "experiment": experiment})
    atomic_write_text(layout.sweep_dir / "tracking.json", text)


def _start_sink(layout: ResultsLayout, sweep_run: Any, max_failures: int) -> ray.actor.ActorHandle:
    """The sink actor on this (the driver's) node: its disk holds the results, its store the runs."""
    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(ResultsSink).options(
        num_cpus=0, max_restarts=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
    )
    return actor.remote(layout, sweep_run, max_failures)


def _trainable(config: dict[str, Any], *, trials: dict[str, Trial], sink: ray.actor.ActorHandle,
               threads: int, checkpoint_every: int | None) -> None:
    import torch

    torch.set_num_threads(threads)  # the trial's CPU share, not every core of the node
    trial = trials[config["trial_id"]]
    last = [0.0]

    def forward(step: int, metrics: dict[str, float]) -> None:
        if time.monotonic() - last[0] >= TUNE_REPORT_SECONDS:
            last[0] = time.monotonic()
            tune.report({"step": step, **metrics})

    def phase(name: str, step: int) -> None:
        last[0] = time.monotonic()
        tune.report({"step": step, "phase": name})

    summary = run_trial(trial, RemoteSink(sink), on_report=forward, on_phase=phase,
                        node=ray.util.get_node_ip_address(), checkpoint_every=checkpoint_every)
    tune.report({"done": 1, **summary})


class _Progress(tune.Callback):
    """Feeds Tune's trial events and results to the progress lines (pipeline.progress), instead of
    Tune's tables."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress

    def __getstate__(self) -> dict[str, Any]:
        return {"progress": None}  # Tune pickles its callbacks with the experiment's state: the display stays

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.progress is not None:
            self.progress.started(trial.config["trial_id"])

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.progress is not None:
            self.progress.result(trial.config["trial_id"], result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.progress is not None:
            result = trial.last_result or {}
            self.progress.ended(trial.config["trial_id"], failed=False, seconds=result.get("trial_seconds"),
                                diverged=bool(result.get("diverged")), resumed_at=result.get("resumed_at"))

    def on_trial_recover(self, iteration, trials, trial, **info):
        if self.progress is not None:
            self.progress.retrying(trial.config["trial_id"], trial.run_metadata.num_failures)

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.progress is not None:
            self.progress.ended(trial.config["trial_id"], failed=True)


def _error_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


@contextlib.contextmanager
def _stderr_to(path: os.PathLike[str] | None) -> Iterator[None]:
    """Send this process's file descriptor 2 to `path` (None: leave it): Ray's C++ core writes its
    warnings there directly (e.g. "Failed to determine local IP" without a route to the Internet)."""
    if path is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def _ray_session(config: SweepConfig, *, verbose: bool = False, log_file: os.PathLike[str] | None = None,
                 progress: Progress | None = None, signals: StopSignals | None = None) -> Iterator[None]:
    """Joins the running Ray (tests, `ray.address`) or starts a local one and stops it after.

    Unless `verbose`, what Ray prints while it starts and stops goes to `log_file`, and the loggers in
    _QUIET_LOGGERS are silenced for the session."""
    started = not ray.is_initialized()
    quiet = None if verbose else log_file
    levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    if not verbose:
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        if started:
            local = config.ray.address is None
            if progress is not None:
                progress.say("starting Ray locally" if local else f"connecting to Ray at {config.ray.address}")
            begin = time.monotonic()
            with _stderr_to(quiet), _refused_as_config_error(config.ray.address):
                ray.init(
                    address=config.ray.address,
                    num_cpus=config.ray.num_cpus if local else None,
                    include_dashboard=False,
                    # Trials do not print; their logs stay in Ray's session directory, our lines say what ran.
                    log_to_driver=verbose,
                    configure_logging=True,
                    logging_level=logging.INFO if verbose else logging.WARNING,
                )
            if signals is not None:
                signals.install()  # ray.init installed its own SIGTERM handler (sys.exit)
            if not local:  # a trial no node can hold would wait forever: say so now (ConfigError)
                check_cluster_resources(config, ray.nodes())
            if progress is not None:
                progress.say(f"Ray up in {time.monotonic() - begin:.0f} s; starting the trials' workers")
        elif progress is not None:
            progress.say("joined the running Ray; starting the trials' workers")
        yield
    finally:
        try:
            if started:
                with _stderr_to(quiet):
                    ray.shutdown()
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _refused_as_config_error(address: str | None) -> Iterator[None]:
    """An address that answers but is no Ray (preflight only checks that it answers): one error line."""
    try:
        yield
    except ConnectionError as err:
        raise ConfigError(f"ray.address: no Ray cluster answers at {address} ({err}); expected the address "
                          "of a running Ray head (host:port) or null for a local Ray") from None


def run(plan: SweepPlan, *, log: Log = lambda line: None, verbose: bool = False,
        signals: StopSignals | None = None) -> SweepOutcome:
    """Run the planned trials on Ray Tune; each sends its results to the sink on this node. Progress
    lines go to stdout (pipeline.progress); `verbose` keeps Ray's and Tune's own output.

    The sweep's tracking run is found again when this sweep ran before (one run per sweep), and no
    run is left RUNNING when this returns or raises: trials that were stopped end KILLED, trials
    whose process died FAILED, with the reason. Tracking failures are counted, never raised, once
    the sweep's run exists (SweepOutcome.tracking_error). `signals`: the command's stop signals."""
    config, outcome, start = plan.config, SweepOutcome(), time.perf_counter()
    signals = signals or StopSignals()
    if plan.done:
        log(f"{len(plan.done)} of {plan.total} trials already finished in {plan.layout.sweep_dir}: skipped")
    # The store, the experiment and the parent run exist before any trial starts (TrackingError
    # here: the store cannot be used at all, reported before Ray starts).
    sweep_run = plan.tracker.start_sweep(
        config.name, description=config.description,
        tags={"trials": str(plan.total), "sweep_dir": str(plan.layout.sweep_dir)},
    )
    outcome.sweep_run = sweep_run
    write_tracking_file(plan.layout, plan.tracker.uri, config.name)
    plan.layout.write_plan([t.trial_id for t in config.trials], {t.trial_id: t.experiment for t in config.trials})
    plan.layout.write_config(config.to_yaml())  # the report shows it; `sweep <it>` reruns the sweep
    status, reason = "KILLED", "the sweep command ended before its trials did"
    try:
        if plan.trials:
            _run_trials(plan, sweep_run, outcome, signals, verbose)
        if outcome.signal is not None:
            status, reason = "KILLED", f"stopped by {_signal_name(outcome.signal)}; re-run the command to resume"
        elif outcome.failed:
            status, reason = "FAILED", f"{len(outcome.failed)} trials failed"
        else:
            status, reason = "FINISHED", None
    finally:
        finished = [*plan.done, *outcome.finished]
        try:  # runs left RUNNING by an earlier, killed invocation end too
            sweep_run.close_stale(finished, "the sweep command ended before this trial did")
            sweep_run.end(status, reason)
        except Exception as err:
            outcome.tracking_error = outcome.tracking_error or f"{type(err).__name__}: {_error_line(err)}"
    outcome.seconds = time.perf_counter() - start
    _no_reset_at_exit()
    return outcome


def _signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def _run_trials(plan: SweepPlan, sweep_run: Any, outcome: SweepOutcome, signals: StopSignals, verbose: bool) -> None:
    config = plan.config
    plan.layout.ray_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(config.name, {t.trial_id: t.steps for t in plan.trials}, done_earlier=len(plan.done))
    with progress, _ray_session(config, verbose=verbose, log_file=plan.layout.ray_dir / "ray-driver.log",
                                progress=progress, signals=signals):
        sink = _start_sink(plan.layout, sweep_run, config.retry.max_failures)
        try:
            signals.graceful = True
            results = _fit(plan, sink, progress, verbose)
        finally:
            signals.graceful = False
            outcome.signal = signals.signum
            # A trial stopped by a signal, or whose worker died, left its run open: end it, never RUNNING.
            status, reason = ("KILLED", f"stopped by {_signal_name(signals.signum)}") if signals.signum else (
                "FAILED", "the trial's process died")
            with contextlib.suppress(Exception):
                ray.get(sink.end_open.remote(status, reason), timeout=60)
            with contextlib.suppress(Exception):
                outcome.tracking_error = ray.get(sink.tracking_failure.remote(), timeout=60)
    planned = {t.trial_id: t for t in plan.trials}
    seen = set()
    for result in results:
        if not result.config:  # interrupted before Tune started it
            continue
        trial_id = result.config["trial_id"]
        seen.add(trial_id)
        error_file = plan.layout.error_file(trial_id)
        missing = _missing_records(plan.layout, planned[trial_id])
        if missing is not None and outcome.signal is not None and not error_file.is_file():
            outcome.interrupted.append(trial_id)
        elif result.error is not None:
            where = f" (traceback: {error_file})" if error_file.is_file() else ""
            outcome.failed[trial_id] = _error_line(result.error) + where
        elif missing is not None:
            outcome.failed[trial_id] = f"finished, but its records are not in {plan.layout.sweep_dir}: {missing}"
        else:
            outcome.finished.append(trial_id)
            outcome.results[trial_id] = dict(result.metrics or {})
    if outcome.signal is not None:  # trials Tune never started
        outcome.interrupted += [t for t in planned if t not in seen]


def _no_reset_at_exit() -> None:
    """Ray's autoscaler CLI module runs colorama.init(), whose exit hook writes a stray colour reset
    ("\\x1b[0m") to a terminal after our last line: unregister it."""
    initialise = sys.modules.get("colorama.initialise")
    if initialise is not None:
        atexit.unregister(initialise.reset_all)


def _missing_records(layout: ResultsLayout, trial: Trial) -> str | None:
    """What of a finished trial is not in the results directory (its done mark, its record files)."""
    if not layout.done_mark(trial.trial_id).is_file():
        return "no done mark"
    present = {p.stem for p in layout.records_dir(trial.trial_id).glob("*.parquet")}
    absent = sorted({*EXPERIMENT_TABLES[trial.experiment], "trials"} - present)
    return f"no {', '.join(absent)} records" if absent else None


def _fit(plan: SweepPlan, sink: ray.actor.ActorHandle, progress: Progress, verbose: bool) -> tune.ResultGrid:
    config = plan.config
    resources = config.resources_per_trial
    # Tune's newer console output prints its config table and TensorBoard hints even at
    # verbose=0; the classic one stays quiet, and _Progress says what happens.
    if not verbose:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # SIGINT is ours (pipeline.interrupts): it stops Tune through Tune's SIGUSR1 handler and
    # remembers which signal it was.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    trainable = tune.with_parameters(
        _trainable,
        trials={t.trial_id: t for t in plan.trials},
        sink=sink,
        threads=max(1, int(resources.cpu)),
        checkpoint_every=config.retry.checkpoint_every,
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": resources.cpu, "gpu": resources.gpu, **resources.custom}),
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
            verbose=2 if verbose else 0,
            callbacks=[_Progress(progress)],
            # A trial whose worker died (or that raised) runs again, from the checkpoint it left
            # with the sink (pipeline.runner.run_trial): Tune's own checkpoints would need storage
            # every node shares, and the sink's node's disk is the one place all of them reach.
            failure_config=tune.FailureConfig(max_failures=config.retry.max_failures),
        ),
    )
    return tuner.fit()
