"""Ctrl-C (SIGINT) and SIGTERM during a sweep: the first one stops the sweep gracefully (Ray Tune
stops the trials; their runs end KILLED; the summary is printed) and the command exits 128 + the
signal's number; a second one, or one outside the trials' run, raises Interrupted at once."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A stop signal arrived (BaseException, as KeyboardInterrupt: no `except Exception` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Which signal arrived (`signum`), and what it does: while `graceful` is set (Ray Tune's loop
    runs) it calls Tune's own stop handler (the one Tune installs for SIGUSR1); otherwise it raises."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.graceful = False

    def handler(self, signum: int, frame: object) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if first and self.graceful and callable(tune_stop):
            tune_stop(signal.SIGUSR1, frame)
            return
        raise Interrupted(self.signum)

    def install(self) -> None:
        """(Again: ray.init replaces the SIGTERM handler with its own.)"""
        for sig in SIGNALS:
            signal.signal(sig, self.handler)


@contextlib.contextmanager
def stop_signals() -> Iterator[StopSignals]:
    """Our handlers for SIGINT and SIGTERM inside the block; the previous ones after it."""
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    state = StopSignals()
    state.install()
    try:
        yield state
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
