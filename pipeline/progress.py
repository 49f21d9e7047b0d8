"""Progress while a sweep runs: a line per running trial and one for the sweep, Ray-free.

On a terminal the lines are redrawn in place every LIVE_SECONDS (events: started, finished, FAILED, printed
above them); elsewhere (a pipe, a CI log, `ray job logs`, TERM=dumb) they are plain lines: a trial's line
when its phase changes or, at most every PLAIN_SECONDS, when its step moved; the sweep's line every
PLAIN_SECONDS and at each trial's end. A ticker thread keeps the lines coming while nothing reports (Ray
starting, a long measurement). `close` clears the live lines, so what the caller prints next is the last.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

LIVE_SECONDS = 1.0
PLAIN_SECONDS = 10.0
_CLEAR_LINE = "\x1b[2K"
_UP = "\x1b[1A"


def is_live(stream: TextIO) -> bool:
    """Redraw in place only on a terminal that understands cursor movement."""
    term = os.environ.get("TERM", "")
    return bool(getattr(stream, "isatty", lambda: False)()) and term not in ("", "dumb")


def clock(seconds: float) -> str:
    """1:05, 1:02:03 (elapsed and remaining times)."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class TrialState:
    steps: int
    status: str = "pending"  # pending, running, done, failed
    phase: str = "waiting"
    step: int = 0
    loss: float = math.nan
    started: float = math.nan
    seconds: float = math.nan  # wall time, once ended
    printed: tuple[str, int] | None = None  # (phase, step) of the last plain line
    printed_at: float = -math.inf


class Progress:
    """The sweep's progress display; thread-safe (Tune's callbacks and the ticker both call it)."""

    def __init__(self, name: str, steps: Mapping[str, int], *, done_earlier: int = 0, stream: TextIO | None = None,
                 live: bool | None = None, now: Callable[[], float] = time.monotonic) -> None:
        self.name, self.done_earlier = name, done_earlier
        self.stream = sys.stdout if stream is None else stream
        self.live = is_live(self.stream) if live is None else live
        self.now = now
        self.start = now()
        self.trials = {trial_id: TrialState(n) for trial_id, n in steps.items()}
        self.note = "starting Ray"
        self.started_count = 0
        self.slots = 1  # the most trials seen running at once
        self._lock = threading.RLock()
        self._drawn = 0  # live lines on screen now
        self._sweep_at = now()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # --- what happens ---------------------------------------------------------------------------------

    def say(self, note: str) -> None:
        """What the sweep does while no trial runs (starting Ray, waiting for workers)."""
        with self._lock:
            self.note = note
            if not self.live:
                self._write([f"{self._elapsed()} {note}"])

    def started(self, trial_id: str) -> None:
        with self._lock:
            state = self.trials[trial_id]
            state.status, state.phase, state.started = "running", "starting", self.now()
            self.started_count += 1
            self.note = ""
            self.slots = max(self.slots, self._count("running"))
            self._event(f"[started {self.started_count}/{len(self.trials)}] {trial_id}")

    def result(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """A trial's report: its step, train_loss and phase, as far as it has them."""
        with self._lock:
            state = self.trials[trial_id]
            if "step" in result:
                state.step = int(result["step"])
            if isinstance(result.get("train_loss"), (int, float)):
                state.loss = float(result["train_loss"])
            if "phase" in result:
                state.phase = str(result["phase"])
            elif "train_loss" in result and state.phase == "starting":
                state.phase = "training"
            if not self.live:
                self._plain_trial(trial_id, state)

    def retrying(self, trial_id: str, failures: int) -> None:
        """Tune runs a failed trial again (it resumes from its last checkpoint, pipeline.runner)."""
        with self._lock:
            state = self.trials[trial_id]
            state.status, state.phase = "pending", "retrying"
            self.started_count -= 1  # its next start is the same trial's
            self._event(f"[retrying] {trial_id} after failure {failures} (from its last checkpoint, if it left one)")

    def ended(self, trial_id: str, *, failed: bool, seconds: float | None = None, diverged: bool = False,
              resumed_at: int | None = None) -> None:
        """A trial ended: failed, or done (finished, or diverged: it stopped early and says so)."""
        with self._lock:
            state = self.trials[trial_id]
            state.status = "failed" if failed else "done"
            state.seconds = seconds if seconds is not None and math.isfinite(seconds) else self.now() - state.started
            ended = self._count("done") + self._count("failed")
            word = "diverged" if diverged else "finished"
            resumed = f", resumed at step {resumed_at}" if resumed_at else ""
            what = f"FAILED   {trial_id}" if failed else f"{word} {trial_id} ({state.seconds:.0f} s{resumed})"
            self._event(f"[ended {ended}/{len(self.trials)}] {what}")
            if not self.live:
                self._write([self.sweep_line()])

    # --- the lines ------------------------------------------------------------------------------------

    def trial_line(self, trial_id: str, state: TrialState) -> str:
        loss = "" if math.isnan(state.loss) else f"  loss {state.loss:.4g}"
        return (f"  {trial_id}  {state.phase:<9} step {state.step}/{state.steps}{loss}"
                f"  ({self.now() - state.started:.0f} s)")

    def sweep_line(self) -> str:
        counts = {s: self._count(s) for s in ("done", "running", "pending", "failed")}
        earlier = f" (+{self.done_earlier} earlier)" if self.done_earlier else ""
        note = f"; {self.note}" if self.note and not counts["running"] else ""
        return (f"sweep {self.name}: {counts['done']} done{earlier}, {counts['running']} running, "
                f"{counts['pending']} pending, {counts['failed']} failed; {self._elapsed()} elapsed, "
                f"~{clock(self.remaining())} left{note}")

    def remaining(self) -> float:
        """Estimated seconds left: the mean trial time (finished trials, else running trials' pace)
        times the work left, spread over as many trials as have run at once."""
        finished = [s.seconds for s in self.trials.values() if s.status == "done"]
        running = [s for s in self.trials.values() if s.status == "running"]
        now = self.now()
        paces = [(now - s.started) * s.steps / s.step for s in running if s.step > 0]
        mean = sum(finished) / len(finished) if finished else (sum(paces) / len(paces) if paces else math.nan)
        work = self._count("pending") * mean + sum(max(mean - (now - s.started), 0.0) for s in running)
        return work / max(self.slots, 1) if self._count("pending") or running else 0.0

    def tick(self) -> None:
        """Redraw the live lines, or write the sweep's plain line when it is due."""
        with self._lock:
            if self.live:
                self._redraw()
            elif self.now() - self._sweep_at >= PLAIN_SECONDS:
                due = {i: s for i, s in self.trials.items() if s.status == "running"
                       and self.now() - s.printed_at >= PLAIN_SECONDS and s.printed != (s.phase, s.step)}
                lines = [self.trial_line(i, s) for i, s in due.items()]
                for state in due.values():
                    state.printed, state.printed_at = (state.phase, state.step), self.now()
                self._write([*lines, self.sweep_line()])

    def __enter__(self) -> Progress:
        self._ticker = threading.Thread(target=self._run_ticker, name="progress", daemon=True)
        self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the ticker and clear the live lines."""
        self._stop.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join(timeout=5)
        with self._lock:
            self._clear()
            self.stream.flush()

    # --- internals ------------------------------------------------------------------------------------

    def _run_ticker(self) -> None:
        while not self._stop.wait(LIVE_SECONDS):
            self.tick()

    def _count(self, status: str) -> int:
        return sum(s.status == status for s in self.trials.values())

    def _elapsed(self) -> str:
        return clock(self.now() - self.start)

    def _plain_trial(self, trial_id: str, state: TrialState) -> None:
        key = (state.phase, state.step)
        if state.printed is None or state.printed[0] != state.phase or (
                key != state.printed and self.now() - state.printed_at >= PLAIN_SECONDS):
            state.printed, state.printed_at = key, self.now()
            self._write([self.trial_line(trial_id, state)])

    def _event(self, line: str) -> None:
        if self.live:
            self._clear()
            self._write([line])
            self._redraw()
        else:
            self._write([line])

    def _write(self, lines: list[str]) -> None:
        self.stream.write("".join(line + "\n" for line in lines))
        self.stream.flush()
        self._sweep_at = self.now() if lines and lines[-1].startswith("sweep ") else self._sweep_at

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write((_UP + _CLEAR_LINE) * self._drawn + "\r")
            self._drawn = 0

    def _redraw(self) -> None:
        self._clear()
        lines = [self.trial_line(i, s) for i, s in self.trials.items() if s.status == "running"]
        lines.append(self.sweep_line())
        width = _width(self.stream)
        self.stream.write("".join(line[:width] + "\n" for line in lines))
        self.stream.flush()
        self._drawn = len(lines)


def _width(stream: TextIO) -> int:
    """The terminal's width (lines longer than it would wrap and break the redraw)."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        columns = 0
    return max(40, columns - 1) if columns else 159  # 0: a terminal that does not say (`script`)
