"""The head's tracking server (`python -m pipeline tracking-server`, as cluster.yaml starts it): it
answers its health check before the command returns, serves the sweeps' default store, listens on
loopback only, and stops when Ray stops on the node (what `ray down` does on the head)."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from tests.cluster.cluster_testing import TwoNodeCluster, can_run

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.cluster,
              pytest.mark.skipif(can_run() is not None, reason=f"two-node cluster: {can_run()}")]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_tracking_server_is_healthy_on_loopback_and_stops_with_ray(tmp_path):
    with TwoNodeCluster(tmp_path) as cluster:
        head = cluster.head
        workdir = head.home / "project"
        workdir.mkdir()
        out = head.run("python", "-m", "pipeline", "tracking-server", "--host", "127.0.0.1", "--port", "5000",
                       cwd=workdir, timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "tracking server: http://127.0.0.1:5000" in out.stdout
        servers = [p for p in head.pids() if "mlflow server" in _cmdline(p)]
        assert len(servers) == 1
        # Healthy and serving the default store in the working directory, from inside the namespace.
        probe = head.run("python", "-c", "import urllib.request as u; "
                         "print(u.urlopen('http://127.0.0.1:5000/api/2.0/mlflow/experiments/search?max_results=5')"
                         ".read().decode())", timeout=60)
        assert json.loads(probe.stdout)["experiments"][0]["name"] == "Default"
        assert (workdir / "mlflow.db").is_file()
        # Not reachable on the node's cluster address: loopback only.
        refused = head.run("python", "-c", f"import urllib.request as u; u.urlopen('http://{head.ip}:5000/health', "
                           "timeout=3)", timeout=60)
        assert refused.returncode != 0
        # Ray stops on the head: its raylet ends (SIGKILL: a raylet whose GCS went first can keep
        # retrying for minutes; `ray stop` escalates to SIGKILL the same way): the server follows.
        for pid in head.pids():
            if _comm(pid) == "raylet":
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while any("mlflow server" in _cmdline(p) or "uvicorn" in _cmdline(p) for p in head.pids()):
            assert time.monotonic() < deadline, "the tracking server outlived Ray"
            time.sleep(0.5)
    with pytest.raises(OSError):
        urllib.request.urlopen("http://127.0.0.1:5000/health", timeout=2)  # nothing leaked to this namespace
