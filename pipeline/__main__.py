"""Command line: `python -m pipeline sweep CONFIG [key.path=value ...] | aggregate RESULTS_DIR | setup [...]`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: python -m pipeline COMMAND ...
  sweep CONFIG [key.path=value ...]   run a sweep (Ray Tune + MLflow), then its aggregate stage
  aggregate RESULTS_DIR               re-run the aggregate stage of <results_dir>/<sweep name>
  setup [--data-dir D] [--only NAME]  prepare the corpora (idempotent)"""


def _error(message: str) -> int:
    """Bad input: one line on stderr, exit status 2 (docs/science.md, 'Stable interfaces')."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    return 2


def _say(line: str) -> None:
    print(line, flush=True)


def sweep_command(args: Sequence[str]) -> int:
    """Validate everything (config, overrides, results directory) before Ray starts, then run."""
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if not args or args[0].startswith("-"):
        return _error(f"sweep: expected a config file, got {list(args)}; usage: python -m pipeline sweep CONFIG [key.path=value ...]")
    from pipeline.config import ConfigError, load_config

    try:
        config = load_config(args[0], args[1:])
        from pipeline import sweep

        plan = sweep.prepare(config)
    except ConfigError as err:
        return _error(str(err))
    total = len(plan.trials) + len(plan.done)
    _say(f"sweep {config.name}: {total} trials ({len(plan.trials)} to run) -> {plan.sweep_dir}")
    from pipeline.tracking import TrackingError, browse_hint

    try:
        outcome = sweep.run(plan, log=_say)
    except TrackingError as err:  # before Ray starts: the store is set up first
        return _error(str(err))
    for trial_id, line in outcome.failed.items():
        print(f"FAILED {trial_id}: {line}", file=sys.stderr)
    _say(f"sweep {config.name}: {len(outcome.finished)} finished, {len(outcome.failed)} failed, "
         f"{len(plan.done)} done earlier, {outcome.seconds:.0f} s")
    if outcome.aggregate_error:
        print(f"aggregate: {outcome.aggregate_error}", file=sys.stderr)
    else:
        from pipeline.schemas import OUTPUT_TABLES

        tables = sum(name in OUTPUT_TABLES for name in outcome.outputs)
        figures = sum(name.startswith("figure:") for name in outcome.outputs)
        _say(f"tables:  {plan.sweep_dir / 'tables'}/ ({tables} files)")
        _say(f"figures: {plan.sweep_dir / 'figures'}/ ({figures} files)")
        _say(f"report:  {outcome.outputs.get('report', plan.sweep_dir / 'report.md')}")
    _say(f"runs:    {browse_hint(plan.tracking_uri)}")
    return 1 if outcome.failed or outcome.aggregate_error else 0


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


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "sweep":
        return sweep_command(rest)
    if command == "aggregate":
        from pipeline.aggregate import main as aggregate_main

        return aggregate_main(rest)
    if command == "setup":
        return setup_command(rest)
    return _error(f"unknown command {command!r}; allowed: sweep, aggregate, setup")


if __name__ == "__main__":
    sys.exit(main())
