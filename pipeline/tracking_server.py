"""The cluster head's tracking server: `mlflow server` on the driver's default store, health-checked
at start-up, and stopped when Ray stops on this node (so `ray down`, which runs `ray stop` on the
head, stops it too).

    python -m pipeline tracking-server [--host 127.0.0.1] [--port 5000] [--store sqlite:///mlflow.db]

The command returns once the server answers its health check (exit 0), or exits 1 with the end of
the server's log. A watcher process stays behind: when no Ray raylet runs on this machine any more
(checked every few seconds) it ends the server's process group and exits.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

HEALTH_TIMEOUT = 90.0  # seconds for the server to answer /health
WATCH_SECONDS = 3.0


def raylet_running() -> bool:
    """A Ray raylet runs on this node: this machine, in this network namespace (/proc, no extra
    dependency; the namespace check keeps other nodes' raylets on one test machine apart)."""
    ours = os.readlink("/proc/self/ns/net")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "raylet" and os.readlink(entry / "ns" / "net") == ours:
                    return True
            except OSError:
                continue
    return False


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def spawn(host: str, port: int, store: str, log: BinaryIO, artifacts: Path | None = None) -> subprocess.Popen:
    """`mlflow server` on host:port over `store` (one worker), writing to `log`, in a process group of
    its own (stop the group, not the pid: the server forks its workers)."""
    argv = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", host, "--port", str(port),
            "--backend-store-uri", store, "--workers", "1"]
    if artifacts is not None:
        argv += ["--default-artifact-root", artifacts.as_uri()]
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def wait_healthy(server: subprocess.Popen, url: str, seconds: float) -> bool:
    """True once `url` answers its health check; False if the server exits or `seconds` pass first."""
    deadline = time.monotonic() + seconds
    while not healthy(url):
        if server.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def _parse(args: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline tracking-server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--store", default="sqlite:///mlflow.db", help="backend store URI (the sweeps' default)")
    parser.add_argument("--artifacts", default="mlruns", help="artifact root beside the store")
    parser.add_argument("--log", default="mlflow-server.log")
    parser.add_argument("--no-watch", action="store_true", help="do not stop the server when Ray stops")
    return parser.parse_args(list(args))


def main(argv: Sequence[str]) -> int:
    try:
        opts = _parse(argv)
    except SystemExit as done:  # --help, or a usage error (argparse printed it)
        return int(done.code or 0)
    from pipeline.tracking import resolve_tracking_uri

    store = resolve_tracking_uri(opts.store)
    artifacts = Path(opts.artifacts).expanduser().absolute()
    url = f"http://{opts.host}:{opts.port}"
    with open(opts.log, "ab") as log:
        server = spawn(opts.host, opts.port, store, log, artifacts)
    if not wait_healthy(server, url, HEALTH_TIMEOUT):
        _stop(server.pid)
        tail = Path(opts.log).read_text(errors="replace").splitlines()[-20:]
        print(f"error: tracking server at {url} did not become healthy; {opts.log}:", *tail, sep="\n",
              file=sys.stderr)
        return 1
    print(f"tracking server: {url} (store {store}, pid {server.pid})", flush=True)
    if opts.no_watch:
        return 0
    if os.fork() != 0:  # the caller returns; the watcher stays
        return 0
    os.setsid()
    # Let go of the caller's terminal or pipes (ssh, `ray up`), which wait for them to close.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    # The server is the parent's child, not the watcher's: liveness by signal 0, not poll().
    while _alive(server.pid) and raylet_running():
        time.sleep(WATCH_SECONDS)
    _stop(server.pid)
    os._exit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has exited


def _stop(pgid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        time.sleep(2)
