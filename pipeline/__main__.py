"""Command line: `python -m pipeline sweep|plan CONFIG [key.path=value ...] | aggregate RESULTS_DIR | sync-mlflow ...`.

Exit status of `sweep`: 0 all trials finished; 1 a trial failed (or no records to aggregate);
2 bad input, an unusable tracking store at start, or the sweep already running; 3 every trial
finished but tracking failed on the way (repair: sync-mlflow); 130 / 143 stopped by SIGINT / SIGTERM.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import Any

USAGE = """usage: python -m pipeline COMMAND ...
  sweep CONFIG [key.path=value ...] [--verbose]
                                      run a sweep (Ray Tune + MLflow), then its aggregate stage;
                                      --verbose keeps Ray's and Tune's own output
  plan CONFIG [key.path=value ...]    validate a config; print its trials and estimated GPU-hours (a dry run)
  aggregate RESULTS_DIR               re-run the aggregate stage of <results_dir>/<sweep name>
  sync-mlflow RESULTS_DIR [--tracking-uri URI]
                                      repair the sweep's MLflow runs from its records
  setup [--data-dir D] [--only NAME]  prepare the corpora (idempotent)
  tracking-server [--host H] [--port P] [--store URI]
                                      a cluster head's MLflow server, stopped when Ray stops"""


def _error(message: str) -> int:
    """Bad input: one line on stderr, exit status 2 (docs/science.md, 'Stable interfaces')."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    return 2


def _say(line: str) -> None:
    print(line, flush=True)


def sweep_command(args: Sequence[str]) -> int:
    """Validate everything (config, overrides, results directory) before Ray starts, then run,
    then the aggregate stage and the report."""
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    verbose = "--verbose" in args
    args = [a for a in args if a != "--verbose"]
    if not args or args[0].startswith("-"):
        return _error(f"sweep: expected a config file, got {list(args)}; "
                      "usage: python -m pipeline sweep CONFIG [key.path=value ...]")
    from pipeline.config import ConfigError, load_config
    from pipeline.preflight import preflight

    try:
        config = load_config(args[0], args[1:])
        preflight(config)  # the machine: paths, data, resources, the Ray address (pipeline.preflight)
        from pipeline.runner import plan_sweep  # MLflow: only once the input is known to be good

        plan = plan_sweep(config)
    except ConfigError as err:
        return _error(str(err))
    from pipeline.interrupts import Interrupted, stop_signals
    from pipeline.sweep_lock import SweepLock, SweepLocked
    from pipeline.tracking import TrackingError, check_reachable

    try:
        check_reachable(plan.tracker.uri)  # seconds, before Ray is even imported
    except TrackingError as err:
        return _error(str(err))

    lock = SweepLock(plan.layout.sweep_dir)
    try:
        lock.acquire()
        plan = plan_sweep(config)  # again, under the lock: what a run that just ended finished
    except (SweepLocked, ConfigError) as err:
        return _error(str(err))
    try:
        with stop_signals() as signals:
            try:
                return _sweep(config, plan, signals, verbose)
            except Interrupted as stop:
                print(f"sweep {config.name}: {stop}; re-run the same command to resume", file=sys.stderr)
                return stop.exit_code
    finally:
        lock.release()


def _sweep(config, plan, signals, verbose: bool) -> int:
    layout = plan.layout
    _say(f"sweep {config.name}: {plan.total} trials ({len(plan.trials)} to run) -> {layout.sweep_dir}")
    from pipeline import sweep
    from pipeline.config import ConfigError
    from pipeline.redact import mask_uri
    from pipeline.tracking import TrackingError

    try:
        outcome = sweep.run(plan, log=_say, verbose=verbose, signals=signals)
    except (TrackingError, ConfigError) as err:  # the store is set up first; a cluster short of resources
        return _error(str(err))
    for trial_id, line in outcome.failed.items():
        print(f"FAILED {trial_id}: {line}", file=sys.stderr)
    # A diverged trial ran to its end (records, done mark): it is not a failure, it is counted apart.
    diverged = [t for t in outcome.finished if (outcome.results.get(t) or {}).get("diverged")]
    _say(f"sweep {config.name}: {len(outcome.finished) - len(diverged)} finished, {len(diverged)} diverged, "
         f"{len(outcome.interrupted)} interrupted, {len(outcome.failed)} failed, {len(plan.done)} done earlier, "
         f"{outcome.seconds:.0f} s")
    if outcome.tracking_error:
        print(f"tracking FAILED ({mask_uri(plan.tracker.uri)}): {outcome.tracking_error}; the records are complete; "
              f"repair the runs with: python -m pipeline sync-mlflow {layout.sweep_dir}", file=sys.stderr)
    if outcome.signal is not None:
        print(f"sweep {config.name}: stopped by {signal_name(outcome.signal)}; "
              "re-run the same command to resume", file=sys.stderr)
        return 128 + outcome.signal
    try:
        outputs = _aggregate_and_report(layout)
    except ValueError as err:
        print(f"aggregate: {err}", file=sys.stderr)
        return 1
    for line in outputs["accounting"]:
        _say(line)
    _say(f"tables:  {layout.tables_dir}/ ({outputs['tables']} files)")
    _say(f"figures: {layout.figures_dir}/ ({outputs['figures']} files)")
    _say(f"report:  {layout.report_path}")
    _say(f"html:    {layout.report_html_path} (figures and report built in {outputs['report_seconds']:.0f} s)")
    if outcome.sweep_run is not None and not outcome.tracking_error:
        try:  # the report in MLflow too: the parent run's artifacts
            uploaded = outcome.sweep_run.log_report(layout)
        except Exception as err:  # the report is on disk; a store that refuses it is worth a line, not a failure
            print(f"tracking: the report was not uploaded: {_error_line(err)}", file=sys.stderr)
        else:
            _say(f"mlflow:  {uploaded} report files in the parent run's artifacts")
    hint = (outcome.sweep_run or plan.tracker).browse_hint()
    _say(f"runs:    {hint}")
    if outcome.failed:
        return 1
    return 3 if outcome.tracking_error else 0


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def _error_line(err: BaseException) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def _aggregate_and_report(layout) -> dict[str, Any]:
    """The aggregate stage, then the report from its tables; ValueError when there are no records."""
    from pipeline.accounting import accounting_lines, trial_states
    from pipeline.aggregate import aggregate, coverage
    from pipeline.report import write_report  # matplotlib is only needed here

    tables = aggregate(layout)
    start = time.perf_counter()
    written = write_report(layout, tables)
    seconds = time.perf_counter() - start
    planned, missing = coverage(layout, tables)
    line = f"records: {len(planned) - len(missing)} of {len(planned)} planned trials"
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        line += f"; missing: {shown}"
    return {"tables": len(tables), "figures": sum(name.startswith("figure:") for name in written),
            "accounting": [line, *accounting_lines(trial_states(layout), tables)],
            "report_seconds": seconds}


PLAN_USAGE = "usage: python -m pipeline plan CONFIG [key.path=value ...]"


def plan_command(args: Sequence[str]) -> int:
    """A dry run: the config validated, its trials counted and their GPU-hours estimated
    (pipeline.cost); no Ray, no tracking store, no data read."""
    if args and args[0] in ("-h", "--help"):
        print(PLAN_USAGE)
        return 0
    if not args or args[0].startswith("-"):
        return _error(f"plan: expected a config file, got {list(args)}; {PLAN_USAGE}")
    from pipeline.config import ConfigError, load_config
    from pipeline.cost import plan_lines

    try:
        config = load_config(args[0], args[1:])
    except ConfigError as err:
        return _error(str(err))
    for line in plan_lines(config):
        _say(line)
    return 0


AGGREGATE_USAGE = "usage: python -m pipeline aggregate RESULTS_DIR   (RESULTS_DIR = <results_dir>/<sweep name>)"


def aggregate_command(args: Sequence[str]) -> int:
    """Re-run the aggregate stage and the report of a sweep directory."""
    if args and args[0] in ("-h", "--help"):
        print(AGGREGATE_USAGE)
        return 0
    if len(args) != 1 or args[0].startswith("-"):
        return _error(f"expected exactly one argument RESULTS_DIR, got {list(args)}; {AGGREGATE_USAGE}")
    from pipeline.aggregate import resolve_layout

    try:
        layout = resolve_layout(args[0])
        outputs = _aggregate_and_report(layout)
    except (ValueError, OSError) as err:
        return _error(str(err))
    _say(f"{layout.sweep_dir}: {outputs['tables']} tables, {outputs['figures']} figures, report {layout.report_path} "
         f"and {layout.report_html_path.name} (built in {outputs['report_seconds']:.0f} s)")
    for line in outputs["accounting"]:
        _say(line)
    return 0


SYNC_USAGE = ("usage: python -m pipeline sync-mlflow RESULTS_DIR [--tracking-uri URI]   "
              "(RESULTS_DIR = <results_dir>/<sweep name>)")


def sync_command(args: Sequence[str]) -> int:
    """Repair a sweep's MLflow runs from its records (pipeline.tracking_sync)."""
    if args and args[0] in ("-h", "--help"):
        print(SYNC_USAGE)
        return 0
    args = list(args)
    uri = None
    if "--tracking-uri" in args:
        at = args.index("--tracking-uri")
        if at + 1 >= len(args):
            return _error(f"--tracking-uri: expected a URI; {SYNC_USAGE}")
        uri = args.pop(at + 1)
        args.pop(at)
    if len(args) != 1 or args[0].startswith("-"):
        return _error(f"expected exactly one argument RESULTS_DIR, got {args}; {SYNC_USAGE}")
    from pipeline.aggregate import resolve_layout
    from pipeline.sweep_lock import SweepLock, SweepLocked
    from pipeline.tracking import TrackingError, open_tracker
    from pipeline.tracking_sync import recorded_tracking, sync

    try:
        layout = resolve_layout(args[0])
    except (ValueError, OSError) as err:
        return _error(str(err))
    recorded = recorded_tracking(layout)
    uri = uri or recorded.get("tracking_uri")
    if uri is None:
        return _error(f"{layout.sweep_dir}: no tracking.json (the sweep never started its run); give --tracking-uri")
    if "***" in uri:
        return _error(f"tracking_uri: {uri} has masked credentials; give --tracking-uri")
    try:
        with SweepLock(layout.sweep_dir):
            summary = sync(layout, open_tracker(uri), recorded.get("experiment") or layout.sweep_dir.name)
    except (SweepLocked, TrackingError) as err:
        return _error(str(err))
    except Exception as err:  # the store failed half-way: running the command again carries on
        print(f"error: tracking_uri: {uri}: {_error_line(err)}; run the command again when the store answers",
              file=sys.stderr)
        return 1
    _say(f"{layout.sweep_dir}: {summary.trials} trials' runs hold their records ({summary.metrics} metric points "
         f"sent), {len(summary.stale)} stale runs ended, {len(summary.missing)} planned trials without records, "
         f"{summary.report_files} report files in the sweep's run")
    return 0


def setup_command(args: Sequence[str]) -> int:
    """Prepare the corpora, then the local tokenizers that the tiny and small presets use."""
    from pipeline.data.prepare import main as setup_main

    status = setup_main(args)
    if status != 0 or "--only" in args or any(a in ("-h", "--help") for a in args):
        return status
    from pipeline.workloads import warm_tokenizers

    data_dir = args[args.index("--data-dir") + 1] if "--data-dir" in args else None
    for kind, vocab in warm_tokenizers(data_dir=data_dir):
        _say(f"tokenizer {kind}-{vocab}: ready")
    return 0


def private_umask() -> None:
    """Files and folders this process and its children (Ray, MLflow's SQLite store) create are never
    group- or world-writable, whatever umask the shell had (0 in many containers)."""
    os.umask(os.umask(0) | 0o022)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    private_umask()
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "sweep":
        return sweep_command(rest)
    if command == "aggregate":
        return aggregate_command(rest)
    if command == "plan":
        return plan_command(rest)
    if command == "setup":
        return setup_command(rest)
    if command == "sync-mlflow":
        return sync_command(rest)
    if command == "tracking-server":
        from pipeline.tracking_server import main as serve

        return serve(rest)
    return _error(f"unknown command {command!r}; allowed: sweep, aggregate, sync-mlflow, setup, tracking-server, plan")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C outside a sweep's run (while loading, planning, aggregating)
        print("interrupted", file=sys.stderr)
        sys.exit(130)
