"""One sweep at a time per sweep directory: the holder is named; a killed holder leaves no lock."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.sweep_lock import SweepLock, SweepLocked

ROOT = Path(__file__).resolve().parents[1]
HOLD = "import sys, time; from pipeline.sweep_lock import SweepLock; SweepLock(sys.argv[1]).acquire(); " \
       "print('held', flush=True); time.sleep(600)"


def test_a_second_holder_is_refused_naming_the_first_and_a_killed_holder_leaves_no_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "sweep")], stdout=subprocess.PIPE,
                              text=True, env={"PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SweepLocked) as info:
            SweepLock(tmp_path / "sweep").acquire()
        assert f"pid {holder.pid} on host {socket.gethostname()}" in str(info.value)
        assert str(tmp_path / "sweep") in str(info.value) and "\n" not in str(info.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with SweepLock(tmp_path / "sweep") as lock:  # the kernel dropped the dead holder's lock
        assert lock.path.is_file()
    SweepLock(tmp_path / "sweep").acquire().release()


def test_the_sweep_command_exits_2_when_its_directory_is_held(tmp_path, capsys):
    from pipeline.__main__ import main

    config = tmp_path / "s.yaml"
    config.write_text(f"name: s\nresults_dir: {tmp_path / 'results'}\ntracking_uri: sqlite:///{tmp_path}/m.db\n"
                      "experiments: [{experiment: convergence, workload: {name: causal_lm, size: tiny}, steps: 2, "
                      "algorithms: {sgd: {lr: 0.1}}}]\n")
    with SweepLock(tmp_path / "results" / "s"):
        assert main(["sweep", str(config)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'results' / 's'} is in use by another run")
    assert not (tmp_path / "m.db").exists()  # refused before the store was touched
