"""A real two-node Ray cluster on this machine: head and worker each in its own network namespace
(joined by a veth pair) and with its own disk (the worker's view of the test's directory is a
private tmpfs, so nothing it writes there reaches the head). Needs root, `ip` and `unshare`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
# Addresses of this test's own namespaces (never reachable from outside them).
SUBNET = "10.77.{}.{}"
DATA_DIR = Path.home() / ".cache" / "adam-sgd-sharpness"


def can_run() -> str | None:
    """Why the cluster cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, mounts)"
    for tool in ("ip", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"needs `{tool}`"
    probe = f"probe{uuid.uuid4().hex[:6]}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "cannot create a network namespace (ip netns add)"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kwargs)


@dataclass
class Node:
    name: str  # the network namespace
    ip: str
    home: Path  # its own HOME, Ray temp dir and TMPDIR: nothing shared with the other node
    private: list[Path] = field(default_factory=list)  # paths this node sees as its own empty tmpfs
    token: str = ""  # the cluster's auth token (as README says: RAY_AUTH_MODE=token + RAY_AUTH_TOKEN)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTEST"))}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        env.update(HOME=str(self.home), TMPDIR=str(self.home / "tmp"), RAY_USAGE_STATS_ENABLED="0",
                   PATH=f"{VENV_BIN}:{env.get('PATH', '')}", PYTHONPATH=str(ROOT),
                   # Every node has the corpora prepared (as cluster.yaml's setup does): the same cache.
                   PIPELINE_DATA_DIR=os.environ.get("PIPELINE_DATA_DIR", str(DATA_DIR)))
        env.update(extra or {})
        return env

    def command(self, *args: str) -> list[str]:
        """`args` run in this node's network namespace, with its private paths mounted over."""
        mounts = " && ".join(f"mount -t tmpfs tmpfs {p}" for p in self.private)
        inner = (mounts + " && " if mounts else "") + 'exec "$@"'
        return ["ip", "netns", "exec", self.name, "unshare", "-m", "--propagation", "private",
                "sh", "-c", inner, "node", *args]

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300,
            cwd: Path = ROOT) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), env=self.env(env), cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)

    def pids(self) -> list[int]:
        out = _run("ip", "netns", "pids", self.name, check=False).stdout
        return [int(p) for p in out.split()]


class TwoNodeCluster:
    """`with TwoNodeCluster(tmp) as cluster:` a head (CPU 1) and a worker (CPU 1, custom resource
    `worker_node`), each started with `ray start` in its namespace, with token auth and the
    cluster's token in the environment (`stale_token`: a different ~/.ray/auth_token, as an earlier
    local Ray leaves, sits in both homes); every process of both namespaces is ended by PID on
    exit (never `ray stop`: it would end other tests' clusters)."""

    def __init__(self, base: Path, *, stale_token: bool = False, head_cpus: int = 1,
                 worker_cpus: int = 1) -> None:
        self.base = base
        self.tag = uuid.uuid4().hex[:6]
        self.stale_token = stale_token
        token = uuid.uuid4().hex
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        octet = int(self.tag[:2], 16) % 200 + 20
        self.head = Node(f"head{self.tag}", SUBNET.format(octet, 1), base / "head", token=token)
        # The worker's own disk: the head's directories (results, tracking store) are not there.
        self.worker = Node(f"work{self.tag}", SUBNET.format(octet, 2), base / "worker", private=[base / "head"],
                           token=token)
        self.gcs = f"{self.head.ip}:6379"
        self.dashboard = f"http://{self.head.ip}:8265"

    def __enter__(self) -> TwoNodeCluster:
        for node in (self.head, self.worker):
            (node.home / "tmp").mkdir(parents=True, exist_ok=True)
            if self.stale_token:  # left by an earlier local Ray: not this cluster's
                (node.home / ".ray").mkdir(exist_ok=True)
                (node.home / ".ray" / "auth_token").write_text(uuid.uuid4().hex)
            _run("ip", "netns", "add", node.name)
            _run("ip", "netns", "exec", node.name, "ip", "link", "set", "lo", "up")
        try:
            h, w = f"vh{self.tag}", f"vw{self.tag}"
            _run("ip", "link", "add", h, "netns", self.head.name, "type", "veth", "peer", "name", w,
                 "netns", self.worker.name)
            for node, dev in ((self.head, h), (self.worker, w)):
                _run("ip", "netns", "exec", node.name, "ip", "addr", "add", f"{node.ip}/24", "dev", dev)
                _run("ip", "netns", "exec", node.name, "ip", "link", "set", dev, "up")
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        head = self.head.run(
            "ray", "start", "--head", f"--node-ip-address={self.head.ip}", "--port=6379",
            f"--num-cpus={self.head_cpus}", "--num-gpus=0", "--include-dashboard=true",
            f"--dashboard-host={self.head.ip}", "--dashboard-port=8265",
            f"--temp-dir={self.ray_dir(self.head)}", "--disable-usage-stats",
        )
        if head.returncode != 0:
            raise RuntimeError(f"ray start --head failed:\n{head.stdout}\n{head.stderr}")
        worker = self.worker.run(
            "ray", "start", f"--address={self.gcs}", f"--node-ip-address={self.worker.ip}",
            f"--num-cpus={self.worker_cpus}", "--num-gpus=0", '--resources={"worker_node": 4}',
            f"--temp-dir={self.ray_dir(self.worker)}", "--disable-usage-stats",
        )
        if worker.returncode != 0:
            raise RuntimeError(f"ray start (worker) failed:\n{worker.stdout}\n{worker.stderr}")
        self.wait_for_nodes(2)

    def ray_dir(self, node: Node) -> Path:
        """Ray's temp dir of a node: short, since Ray's socket paths must fit in 107 bytes."""
        return Path(f"/tmp/ray-{node.name}")

    def wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        code = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
                "print(sum(n['Alive'] for n in ray.nodes()))")
        deadline = time.monotonic() + timeout
        while True:
            out = self.head.run("python", "-c", code, self.gcs, timeout=120)
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster: {count} nodes not alive in {timeout} s: {out.stdout} {out.stderr}")
            time.sleep(2)

    def __exit__(self, *exc) -> None:
        for node in (self.worker, self.head):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                pids = node.pids()
                for pid in pids:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + 10
                while node.pids() and time.monotonic() < deadline:
                    time.sleep(0.2)
            _run("ip", "netns", "del", node.name, check=False)
            shutil.rmtree(self.ray_dir(node), ignore_errors=True)


def records_by_node(sweep_dir: Path) -> dict[str, list[str]]:
    """Trial ids by the node that ran them, from the sweep's `trials` table."""
    import pyarrow.parquet as pq

    table = pq.read_table(sweep_dir / "tables" / "trials.parquet").to_pylist()
    out: dict[str, list[str]] = {}
    for row in table:
        out.setdefault(row["node_ip"], []).append(row["trial_id"])
    return out


def dump(path: Path) -> str:
    return json.dumps(json.loads(path.read_text()), indent=1) if path.is_file() else "-"
