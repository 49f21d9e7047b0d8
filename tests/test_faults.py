"""Faults injected into a real sweep (the command as a user runs it, real Ray, a real MLflow store or
`mlflow server` on loopback): the driver killed, the tracking server killed, Ctrl-C and SIGTERM, the same
sweep launched twice. After each: no step lost or duplicated in the records, one MLflow run per sweep
and per trial (counted through the MLflow API), none left RUNNING. Run under scripts/offline.sh.

Each test prints a `fault:` line (steps lost / duplicated, runs duplicated / RUNNING, seconds from the
fault to recovery); docs/architecture.md quotes them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
STEPS = 1000
TRIALS = [f"convergence-causal_lm-sgd-lr0.1-seed{seed}" for seed in range(3)]
CONFIG = f"""name: faults
device: cpu
ray: {{num_cpus: 2}}
experiments:
  - experiment: convergence
    workload: {{name: causal_lm, size: tiny, batch_size: 4, seq_len: 32}}
    steps: {STEPS}
    eval_every: 200
    seeds: [0, 1, 2]
    algorithms:
      sgd: {{lr: 0.1}}
"""
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}


class Command:
    """`python -m pipeline ...` in its own process group (its local Ray in it too)."""

    def __init__(self, tmp: Path, *args: str, tag: str = "sweep") -> None:
        self.out, self.err = tmp / f"{tag}.out", tmp / f"{tag}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], stdout=out, stderr=err,
                                         cwd=tmp, env=ENV, start_new_session=True)

    def wait(self, timeout: float = 900) -> int:
        return self.proc.wait(timeout=timeout)

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def end_group(self) -> None:
        """What the command left behind (its Ray, after a SIGKILL) ends: only this group."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(1)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def sweep(tmp_path):
    """Runs the faults sweep (same command each time) and ends every process group it started."""
    config = tmp_path / "faults.yaml"
    config.write_text(CONFIG)
    started: list[Command] = []

    def launch(uri: str, tag: str = "sweep") -> Command:
        command = Command(tmp_path, "sweep", str(config), f"results_dir={tmp_path / 'results'}",
                          f"tracking_uri={uri}", tag=f"{tag}{len(started)}")
        started.append(command)
        return command

    yield launch
    for command in started:
        if command.proc.poll() is None:
            os.killpg(command.proc.pid, signal.SIGKILL)
            command.proc.wait()
        command.end_group()


def wait_for(what, timeout: float = 600, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = what()
        except AssertionError:
            raise
        except Exception:  # the store is being created: not yet
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what.__doc__ or what}"
        time.sleep(every)


def runs(uri: str) -> tuple[list, list]:
    """The sweep's parent runs and trial runs, through the MLflow API."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("faults")
    found = client.search_runs([experiment.experiment_id]) if experiment else []
    return ([r for r in found if "mlflow.parentRunId" not in r.data.tags],
            [r for r in found if "mlflow.parentRunId" in r.data.tags])


def running_trial(uri: str, command: Command):
    """A trial run RUNNING (looked for once Tune started trials: the sweep
    has built its store by then; two processes building one SQLite schema at once can clash)."""
    assert command.proc.poll() is None, f"the sweep ended early: {command.stderr()[-2000:]}"
    if "started" not in command.stdout():
        return None
    return next((run for run in runs(uri)[1] if run.info.status == "RUNNING"), None)


def account(tmp: Path, uri: str, finished: list[str] = TRIALS) -> dict[str, int]:
    """Steps lost / duplicated (records, and the MLflow curves), runs duplicated / RUNNING."""
    sweep_dir = tmp / "results" / "faults"
    lost = duplicated = 0
    for trial_id in finished:
        steps = Counter(pq.read_table(sweep_dir / "trials" / trial_id / "records" / "convergence.parquet")
                        .column("step").to_pylist())
        lost += len(set(range(STEPS)) - set(steps))  # a row per update: steps 0 .. STEPS-1
        duplicated += sum(n - 1 for n in steps.values())
    parents, children = runs(uri)
    client = MlflowClient(uri)
    for run in children:
        logged = Counter(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
        duplicated += sum(n - 1 for n in logged.values())
    per_trial = Counter(r.data.tags["trial_id"] for r in children)
    return {"steps_lost": lost, "steps_duplicated": duplicated,
            "runs_duplicated": len(parents) - 1 + sum(n - 1 for n in per_trial.values()),
            "runs_running": sum(r.info.status == "RUNNING" for r in [*parents, *children]),
            "trial_runs": len(per_trial)}


def report(fault: str, numbers: dict[str, int], seconds: float) -> None:
    print(f"fault: {fault}: " + ", ".join(f"{k} {v}" for k, v in numbers.items()) + f", recovery {seconds:.0f} s")


def assert_clean(numbers: dict[str, int], trial_runs: int = len(TRIALS)) -> None:
    assert numbers == {"steps_lost": 0, "steps_duplicated": 0, "runs_duplicated": 0, "runs_running": 0,
                       "trial_runs": trial_runs}


def test_driver_killed_then_the_same_command_resumes(sweep, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = sweep(uri)
    wait_for(lambda: running_trial(uri, first))
    first.proc.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = time.monotonic()
    first.end_group()
    assert any(r.info.status == "RUNNING" for r in runs(uri)[1])  # what the kill left
    again = sweep(uri)
    assert again.wait() == 0, again.stderr()
    numbers = account(tmp_path, uri)
    report("driver SIGKILL, re-run", numbers, time.monotonic() - killed_at)
    assert_clean(numbers)
    assert "3 finished" in again.stdout() or "done earlier" in again.stdout()
    assert [r.info.status for r in runs(uri)[0]] == ["FINISHED"]


def test_sigint_stops_with_130_a_second_launch_exits_2_and_the_same_command_resumes(sweep, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = sweep(uri)
    wait_for(lambda: running_trial(uri, first))
    # The same sweep again while it runs: refused, naming the holder.
    second = sweep(uri, tag="second")
    assert second.wait(timeout=300) == 2
    assert second.stderr().splitlines() == [line for line in second.stderr().splitlines() if line.startswith("error:")]
    assert f"pid {first.proc.pid} on host {socket.gethostname()}" in second.stderr()
    assert len(second.stderr().splitlines()) == 1
    first.proc.send_signal(signal.SIGINT)
    stopped = time.monotonic()
    assert first.wait(timeout=300) == 130, first.stderr()
    stop_seconds = time.monotonic() - stopped
    assert "Traceback" not in first.stderr()
    summary = [line for line in first.stdout().splitlines() if " interrupted, " in line]
    assert len(summary) == 1 and " 0 interrupted," not in summary[0], first.stdout()
    parents, children = runs(uri)
    assert [r.info.status for r in parents] == ["KILLED"]
    assert "RUNNING" not in {r.info.status for r in children} and "KILLED" in {r.info.status for r in children}
    assert not list((tmp_path / "results" / "faults" / "trials").glob("*/error.txt"))
    again = sweep(uri)
    assert again.wait() == 0, again.stderr()
    numbers = account(tmp_path, uri)
    report("SIGINT, re-run", numbers, time.monotonic() - stopped)
    print(f"fault: SIGINT: exit 130 after {stop_seconds:.0f} s")
    assert_clean(numbers)


def test_sigterm_stops_with_143_and_no_run_left_running(sweep, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = sweep(uri)
    wait_for(lambda: running_trial(uri, first))
    first.proc.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    assert first.wait(timeout=300) == 143, first.stderr()
    print(f"fault: SIGTERM: exit 143 after {time.monotonic() - stopped:.0f} s")
    assert "Traceback" not in first.stderr() and "stopped by SIGTERM" in first.stderr()
    parents, children = runs(uri)
    assert [r.info.status for r in parents] == ["KILLED"]
    assert parents[0].data.tags["end_reason"].startswith("stopped by SIGTERM")
    assert "RUNNING" not in {r.info.status for r in children}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(tmp: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on loopback, its store and artifacts in `tmp` (the same ones on a restart)."""
    log = open(tmp / "server.log", "a")  # noqa: SIM115 - the server's
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp}/server.db", "--artifacts-destination", str(tmp / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp, env=ENV,
    )

    def healthy():
        """the tracking server"""
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                return response.status == 200

    wait_for(healthy, timeout=300, every=0.5)
    return proc


def test_tracking_server_killed_mid_sweep_then_sync_restores_the_runs(sweep, tmp_path):
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    try:
        command = sweep(uri)
        wait_for(lambda: running_trial(uri, command))
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        killed = time.monotonic()
        code = command.wait()
        ended = time.monotonic() - killed
        err = command.stderr()
        sweep_dir = tmp_path / "results" / "faults"
        assert code == 3, err
        assert f"tracking FAILED ({uri})" in err and f"python -m pipeline sync-mlflow {sweep_dir}" in err
        assert "Traceback" not in err
        assert "3 finished, 0 diverged, 0 interrupted, 0 failed" in command.stdout()
        assert (sweep_dir / "report.md").is_file() and (sweep_dir / "tables" / "convergence.parquet").is_file()
        server = start_server(tmp_path, port)  # the same store, back
        repaired = subprocess.run([sys.executable, "-m", "pipeline", "sync-mlflow", str(sweep_dir)],
                                  capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
        assert repaired.returncode == 0, repaired.stderr
        numbers = account(tmp_path, uri)
        report("tracking server SIGKILL mid-sweep, sync-mlflow", numbers, time.monotonic() - killed)
        print(f"fault: tracking server SIGKILL: the sweep ended {ended:.0f} s after the kill (exit 3)")
        assert_clean(numbers)
        parents, children = runs(uri)
        assert [r.info.status for r in parents] == ["FINISHED"]
        client = MlflowClient(uri)  # the report the sweep could not upload is in the sweep's run now
        assert {"report.md", "report.html", "tables"} <= {a.path for a in client.list_artifacts(parents[0].info.run_id)}
        for run in children:
            assert run.info.status == "FINISHED"
            assert [a.path for a in client.list_artifacts(run.info.run_id, "records")] == [
                "records/convergence.parquet", "records/trials.parquet"]
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        except ProcessLookupError:
            pass
