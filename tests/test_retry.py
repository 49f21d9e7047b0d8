"""A trial's Ray worker killed mid-trial (SIGKILL) on a real Ray: Tune retries the trial, which resumes from
the checkpoint it left with the results sink; the sweep exits 0 with every step recorded once, one MLflow run
per trial and none left RUNNING.

The kill goes to the one process of this test's Ray (a descendant of this process) whose title says it
runs a trainable, once the trial's checkpoint in the results directory is at step 20 or later (its first
every-N checkpoint; the first, at step 1, follows measurement point 0); trials run one at a time, so that
process runs that trial. Prints the time from the kill to the resumed attempt's start.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient

from pipeline import sweep
from pipeline.__main__ import main
from pipeline.config import load_config
from pipeline.experiments import EXPERIMENTS
from tests.retry_testing import STEPS, VICTIM, checkpoint_step, retry_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CONFIG = retry_config()


def _descendants(root: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, ppid in parents.items() if ppid == pid]
        found += children
        frontier += children
    return found


def _trainable_workers() -> list[int]:
    """This test's Ray workers that run a Tune trainable (Ray sets their title to ray::<class>.<method>)."""
    pids = []
    for pid in _descendants(os.getpid()):
        with contextlib.suppress(OSError):
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            if title.startswith("ray::ImplicitFunc"):
                pids.append(pid)
    return pids


def test_a_killed_worker_s_trial_resumes_from_its_checkpoint_each_step_once(ray_session, tmp_path):
    path = tmp_path / "retry.yaml"
    path.write_text(CONFIG)
    overrides = [f"results_dir={tmp_path / 'results'}", f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    config = load_config(path, overrides)
    layout = config.layout
    seen: dict = {}
    real_run = sweep.run

    def run(plan, **kwargs):  # the CLI's own call, its outcome kept
        seen["outcome"] = real_run(plan, **kwargs)
        return seen["outcome"]

    def killer() -> None:
        """SIGKILL the victim's worker once its checkpoint is at step 20 or later, before it is done."""
        checkpoint, done = layout.checkpoint_file(VICTIM), layout.done_mark(VICTIM)
        while not done.exists() and "outcome" not in seen:
            step = checkpoint_step(checkpoint)
            workers = _trainable_workers()
            if step >= 20 and len(workers) == 1 and not done.exists():
                seen["killed_at_step"], seen["kill_time"] = step, time.time()
                os.kill(workers[0], signal.SIGKILL)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        patch.setattr(sweep, "run", run)
        code = main(["sweep", str(path), *overrides])
    thread.join(timeout=5)
    print(out.getvalue())
    assert "kill_time" in seen, "the worker was not killed mid-trial"
    outcome = seen["outcome"]

    assert code == 0 and not outcome.failed and sorted(outcome.finished) == sorted(t.trial_id for t in config.trials)
    assert f"[retrying] {VICTIM} after failure 1" in out.getvalue()
    resumed = outcome.results[VICTIM]
    # It resumed from the checkpoint the killer saw, or a later one, not from the start.
    assert seen["killed_at_step"] <= resumed["resumed_at"] < STEPS
    print(f"kill at checkpoint step {seen['killed_at_step']}; resumed at step {resumed['resumed_at']}; "
          f"kill -> resumed: {resumed['resumed_time'] - seen['kill_time']:.1f} s")

    # Records: every step exactly once, the same rows as the trial run through without a kill.
    for trial in config.trials:
        rows = pq.read_table(layout.records_dir(trial.trial_id) / "convergence.parquet").to_pylist()
        assert [r["step"] for r in rows] == list(range(STEPS)), trial.trial_id
        assert not layout.checkpoint_file(trial.trial_id).exists()
    victim = next(t for t in config.trials if t.trial_id == VICTIM)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the trial's thread count in its worker (resources_per_trial.cpu)
    try:
        reference = EXPERIMENTS["convergence"](victim, [])["convergence"]
    finally:
        torch.set_num_threads(threads)
    rows = pq.read_table(layout.records_dir(VICTIM) / "convergence.parquet").to_pylist()
    assert [(r["step"], r["train_loss"], r["test_loss"]) for r in rows] == [
        (r["step"], r["train_loss"], r["test_loss"]) for r in reference]

    # MLflow: one run per trial under one parent, none RUNNING, each step's metric once.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("retry").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.tags["trial_id"] for r in children) == sorted(t.trial_id for t in config.trials)
    for run in children:
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert sorted(m.step for m in history) == list(range(STEPS)), run.data.tags["trial_id"]
