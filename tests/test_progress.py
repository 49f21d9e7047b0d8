"""The progress lines (pipeline.progress) on a clock the test moves: plain lines for logs, redrawn lines on a
terminal, the counters and the estimate of the time left."""

from __future__ import annotations

import io

from pipeline import progress as progress_module
from pipeline.progress import Progress, clock


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make(live: bool, steps: dict[str, int] | None = None) -> tuple[Progress, io.StringIO, Clock]:
    out, now = io.StringIO(), Clock()
    shown = Progress("s", steps or {"a": 10, "b": 10, "c": 10}, done_earlier=1, stream=out, live=live, now=now)
    return shown, out, now


def test_plain_lines_follow_phases_and_counters():
    shown, out, now = make(live=False)
    shown.say("starting Ray locally")
    shown.started("a")
    shown.started("b")
    shown.result("a", {"step": 0, "phase": "starting"})  # its first line
    shown.result("a", {"step": 0, "train_loss": 2.5})  # the first metrics: training
    shown.result("a", {"step": 3, "train_loss": 2.0})  # same phase, too soon: no line
    now.t += 5
    shown.result("a", {"step": 5, "phase": "measuring"})
    now.t += 5
    shown.result("a", {"step": 10, "phase": "writing"})
    shown.ended("a", failed=False, seconds=10.0)
    shown.ended("b", failed=True)
    lines = out.getvalue().splitlines()
    assert lines == [
        "0:00 starting Ray locally",
        "[started 1/3] a",
        "[started 2/3] b",
        "  a  starting  step 0/10  (0 s)",
        "  a  training  step 0/10  loss 2.5  (0 s)",
        "  a  measuring step 5/10  loss 2  (5 s)",
        "  a  writing   step 10/10  loss 2  (10 s)",
        "[ended 1/3] finished a (10 s)",
        # a took 10 s; c waits, 2 trials ran at once: (10 s for c + 0 for the running) / 2
        "sweep s: 1 done (+1 earlier), 1 running, 1 pending, 0 failed; 0:10 elapsed, ~0:05 left",
        "[ended 2/3] FAILED   b",
        "sweep s: 1 done (+1 earlier), 0 running, 1 pending, 1 failed; 0:10 elapsed, ~0:05 left",
    ]


def test_plain_sweep_line_every_plain_seconds_with_moved_trials():
    shown, out, now = make(live=False, steps={"a": 100})
    shown.started("a")
    shown.result("a", {"step": 1, "train_loss": 3.0})
    out.truncate(0), out.seek(0)
    shown.tick()  # nothing due yet
    assert out.getvalue() == ""
    now.t += progress_module.PLAIN_SECONDS
    shown.result("a", {"step": 50, "train_loss": 1.0})  # moved and due: its own line
    now.t += progress_module.PLAIN_SECONDS
    shown.tick()
    lines = out.getvalue().splitlines()
    assert lines[0] == "  a  training  step 50/100  loss 1  (10 s)"
    # half done after 20 s: ~20 s left for it
    assert lines[1] == "sweep s: 0 done (+1 earlier), 1 running, 0 pending, 0 failed; 0:20 elapsed, ~0:20 left"


def test_live_lines_are_redrawn_in_place_and_cleared_at_the_end():
    shown, out, now = make(live=True, steps={"a": 4})
    shown.started("a")
    now.t += 2
    shown.result("a", {"step": 2, "train_loss": 1.5})
    shown.tick()
    text = out.getvalue()
    assert text.count("[started 1/1] a\n") == 1
    last = text.rsplit("\r", 1)[-1]
    assert last == ("  a  training  step 2/4  loss 1.5  (2 s)\n"
                    "sweep s: 0 done (+1 earlier), 1 running, 0 pending, 0 failed; 0:02 elapsed, ~0:02 left\n")
    shown.close()
    # The two live lines erased: what the caller prints next is the last line.
    assert out.getvalue().endswith("\x1b[1A\x1b[2K" * 2 + "\r")


def test_clock_and_estimates():
    assert (clock(5), clock(65), clock(3725), clock(float("nan"))) == ("0:05", "1:05", "1:02:05", "?")
    shown, _, now = make(live=False, steps={"a": 10})
    assert shown.remaining() != shown.remaining()  # nothing ran yet: unknown (nan)
    shown.started("a")
    now.t += 30
    shown.result("a", {"step": 5})
    assert shown.remaining() == 30.0


def test_a_retried_trial_is_pending_again_and_its_end_says_where_it_resumed():
    shown, out, now = make(live=False, steps={"a": 10})
    shown.started("a")
    shown.retrying("a", 1)
    assert shown.trials["a"].status == "pending"
    shown.started("a")  # the retry: the same trial, counted once
    now.t += 4
    shown.ended("a", failed=False, seconds=4.0, resumed_at=6)
    lines = out.getvalue().splitlines()
    assert lines[:4] == [
        "[started 1/1] a",
        "[retrying] a after failure 1 (from its last checkpoint, if it left one)",
        "[started 1/1] a",
        "[ended 1/1] finished a (4 s, resumed at step 6)",
    ]
