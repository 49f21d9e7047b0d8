"""Listening sockets of what the project starts: a running sweep's process tree and the tracking server,
read from /proc/<pid>/net/tcp{,6} and the processes' socket inodes while they run."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = ("127.", "::1", "::ffff:127.")


def _address(hex_address: str) -> str:
    """/proc/net/tcp{,6}'s local_address (little-endian 32-bit words) as host:port."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is loopback too
    return f"{mapped or ip}:{int(port, 16)}"


def _tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    tree, i = [root], 0
    while i < len(tree):
        tree += parents.get(tree[i], [])
        i += 1
    return tree


def listeners(root: int) -> dict[str, str]:
    """address:port -> the command name of the process (in root's tree) that listens there."""
    owner: dict[str, str] = {}
    for pid in _tree(root):
        try:
            comm = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")
                      if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")}
            tables = [Path(f"/proc/{pid}/net/{name}").read_text() for name in ("tcp", "tcp6")]
        except OSError:
            continue
        for table in tables:
            for line in table.splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # state LISTEN
                    owner[_address(fields[1])] = Path(comm).name
    return owner


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0]


@pytest.mark.slow
def test_a_running_sweep_listens_on_loopback_only_and_writes_no_shared_files(tmp_path):
    """Nothing on a specific non-loopback address; every-interface listeners are Ray 2.60's gRPC servers
    (GCS, raylet, object manager, core workers), which have no setting to bind loopback (Ray's token
    auth guards them; README): the test reports them as an expected failure, and passes once Ray can."""
    config = tmp_path / "listen.yaml"
    config.write_text(
        "name: listen\ndevice: cpu\nexperiments:\n"
        "  - experiment: convergence\n"
        "    workload: {name: causal_lm, size: tiny, batch_size: 4, seq_len: 32}\n"
        "    steps: 60\n    algorithms: {sgd: {lr: 0.1}}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    # Started under umask 0 (as in many containers): nothing it writes may be group- or world-writable.
    sweep = subprocess.Popen(["bash", "-c", 'umask 000 && exec "$@"', "sh", sys.executable, "-m", "pipeline", "sweep",
                              str(config), f"results_dir={tmp_path / 'results'}",
                              f"tracking_uri=sqlite:///{tmp_path / 'm.db'}"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: dict[str, str] = {}
    try:
        while sweep.poll() is None:
            seen.update(listeners(sweep.pid))
            time.sleep(1.0)
        output = sweep.stdout.read()
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, output[-3000:]
    assert seen, "no listening socket seen while the sweep ran"
    written = [p for p in [tmp_path / "m.db", *(tmp_path / "results").rglob("*")] if not p.is_symlink()]
    assert len(written) > 10
    shared = [f"{p}: {oct(p.stat().st_mode & 0o777)}" for p in written if p.stat().st_mode & 0o022]
    assert not shared, shared
    elsewhere = {a: p for a, p in seen.items() if not _host(a).startswith(LOOPBACK)}
    specific = {a: p for a, p in elsewhere.items() if _host(a) not in ("0.0.0.0", "::")}
    assert not specific, f"listening on a non-loopback address: {specific}"
    if elsewhere:
        pytest.xfail(f"Ray's servers on every interface: {sorted(elsewhere.items())}")


@pytest.mark.slow
def test_the_tracking_server_listens_on_loopback_by_default(tmp_path):
    port = 15000 + os.getpid() % 1000
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "pipeline", "tracking-server", "--port", str(port), "--no-watch",
                           "--store", f"sqlite:///{tmp_path / 'm.db'}", "--log", str(tmp_path / "server.log"),
                           "--artifacts", str(tmp_path / "mlruns")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    pid = int(done.stdout.split("pid ")[1].split(")")[0])
    try:
        bound = {a for a in listeners(pid) if a.endswith(f":{port}")}
        assert bound == {f"127.0.0.1:{port}"}, bound
    finally:
        os.killpg(pid, 15)
