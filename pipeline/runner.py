"""Running trials without Ray: the sweep's plan (what is done, what is left), and one trial end to end
(the experiment; its metrics, records and outcome sent to the results sink, pipeline.sink)."""

from __future__ import annotations

import contextlib
import json
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.config import ConfigError, SweepConfig, Trial
from pipeline.layout import ResultsLayout
from pipeline.preflight import check_writable
from pipeline.tracking import Tracker, open_tracker


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


def plan_sweep(config: SweepConfig) -> SweepPlan:
    """Check the results directory and what earlier runs of this sweep left; no side effects.

    A trial whose directory holds the done mark with the same settings is skipped (a re-run
    resumes); one with different settings would mix two configs in one sweep: ConfigError.
    """
    layout = config.layout
    check_writable(layout.sweep_dir)
    todo, done = [], []
    for trial in config.trials:
        mark = layout.done_mark(trial.trial_id)
        if not mark.is_file():
            todo.append(trial)
            continue
        try:  # through the model: a setting added since (with its default) is not a different config
            earlier = Trial.model_validate(json.loads(mark.read_text())).to_json()
        except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
            earlier = None
        if earlier != trial.to_json():
            raise ConfigError(
                f"name: {layout.sweep_dir} already holds trial {trial.trial_id} with a different config; "
                "choose another name (name=...) or remove that directory"
            )
        done.append(trial.trial_id)
    return SweepPlan(config, layout, open_tracker(config.tracking_uri), todo, done)


class Sink(Protocol):
    """Where a trial's results go (pipeline.sink.ResultsSink, or its Ray actor on the driver's node)."""

    def start(self, trial: Trial) -> str | None: ...  # the trial's tracking run id
    def log(self, trial_id: str, points: list[tuple[int, dict[str, float]]]) -> None: ...
    def save_checkpoint(self, trial_id: str, payload: bytes) -> None: ...
    def load_checkpoint(self, trial_id: str) -> bytes | None: ...
    def finish(self, trial: Trial, encoded: dict[str, bytes], status: str = "finished") -> dict[str, Any]: ...
    def fail(self, trial_id: str, text: str) -> None: ...


# Metric points go to the sink in batches: at most every FLUSH_SECONDS, or FLUSH_POINTS at once.
FLUSH_SECONDS = 10.0
FLUSH_POINTS = 500


def run_trial(
    trial: Trial,
    sink: Sink,
    *,
    on_report: Callable[[int, dict[str, float]], None] | None = None,
    on_phase: Callable[[str, int], None] | None = None,
    node: str | None = None,
    checkpoint_every: int | None = None,
) -> dict[str, Any]:
    """One trial: the experiment, then its records (and `node`, the address of the node that ran
    it: Ray's node IP on a cluster, the host name by default) sent to the sink,
    which writes them and the done mark; its metrics go to the sink as it runs. Returns timings.
    `on_phase(phase, step)` hears what the trial does: "starting", "measuring", "training", "writing".

    With `checkpoint_every` (0: at measurement points only; None: no checkpoints) the trial's
    state goes to the sink at measurement points and every N steps, and the trial starts from the
    last checkpoint an earlier attempt left there (the summary's `resumed_at`: that step, or 0)."""
    from pipeline.experiments import EXPERIMENTS
    from pipeline.experiments.checkpoint import Checkpoints
    from pipeline.records import encode_trial_records

    start = time.perf_counter()
    run_id = sink.start(trial)
    resumed = {"resumed_at": 0}
    pending: list[tuple[int, dict[str, float]]] = []
    last_flush = [time.monotonic()]

    def flush() -> None:
        if pending:
            sink.log(trial.trial_id, list(pending))
            pending.clear()
        last_flush[0] = time.monotonic()

    def report(step: int, metrics: dict[str, float]) -> None:
        pending.append((step, dict(metrics)))
        if len(pending) >= FLUSH_POINTS or time.monotonic() - last_flush[0] >= FLUSH_SECONDS:
            flush()
        if on_report is not None:
            on_report(step, metrics)

    def phase(name: str, step: int) -> None:
        if on_phase is not None:
            on_phase(name, step)

    def save(step: int, payload: bytes) -> None:
        flush()  # the metrics before the checkpoint reach the sink first: a resume sends none of them
        sink.save_checkpoint(trial.trial_id, payload)

    def resume(step: int) -> None:
        resumed.update(resumed_at=step, resumed_time=time.time())

    checkpoints = None
    if checkpoint_every is not None:
        checkpoints = Checkpoints(load=lambda: sink.load_checkpoint(trial.trial_id), save=save,
                                  every=checkpoint_every, on_resume=resume)
    report.phase = phase  # pipeline.experiments.common.set_phase
    try:
        phase("starting", 0)  # the workload is built (data, model) before the first step
        records = EXPERIMENTS[trial.experiment](trial, report, checkpoints)
        phase("writing", trial.steps)
        seconds = time.perf_counter() - start
        host = socket.gethostname()
        # The training loop's outcome (pipeline.experiments.loop): finished, or diverged and where.
        outcome = dict(records.pop("trials", [{}])[0])
        status = outcome.pop("status", "finished")
        records["trials"] = [{"node_ip": node or host, "hostname": host, "seconds": seconds,
                              "diverged_step": outcome.get("diverged_step"),
                              "diverged_loss": outcome.get("diverged_loss"), "run_id": run_id}]
        encoded = encode_trial_records(trial.identity(), records, status=status)
        flush()
        tracked = sink.finish(trial, encoded, status)
    except (KeyboardInterrupt, SystemExit):
        # Stopped (Ctrl-C, SIGTERM, Ray Tune ending the trial's actor), not failed: no error file;
        # the driver ends its run KILLED, and a re-run resumes the trial.
        raise
    except BaseException:
        with contextlib.suppress(Exception):  # the experiment's error is the one to report
            flush()
            sink.fail(trial.trial_id, traceback.format_exc())
        raise
    return {
        "trial_seconds": time.perf_counter() - start,
        "diverged": int(status == "diverged"),
        **tracked,
        **resumed,
        "rows": sum(len(rows) for rows in records.values()),
    }
