"""The launcher path, end to end, with README's commands ("Running on a GPU cluster"):

    ray up CLUSTER_YAML -y --no-config-cache
    ray submit CLUSTER_YAML jobs/sweep.py -- conf/smoke.yaml
    ray down CLUSTER_YAML -y

CLUSTER_YAML is a copy of cluster.yaml in which only the keys that name AWS are swapped (see
`launcher_config`: provider -> Ray's `local` provider with a head and one worker, auth -> a test
user and key, docker and the AWS node types removed); file_mounts, rsync_exclude, setup_commands
(`make setup`), head_start_ray_commands (Ray with token auth, then `python -m pipeline
tracking-server`) and worker_start_ray_commands run as written, the worker's set up by the head's
autoscaler as on AWS.

The machines: the launcher runs in a network namespace of its own; the head and the worker are each
a network, PID and mount namespace (their own /tmp and /run, root's home hidden, and the worker its
own disk: a separate directory mounted as the test user's home), on a bridge in the launcher's
namespace, each with an sshd started by the test that listens on that node's address only and logs
in the test user (created and deleted by the test, its home under the test's temporary directory).

Checked: `ray up` succeeds; the checkout arrives without rsync_exclude's paths and the pre-placed
venv survives the sync; the launcher's Ray token is the cluster's; the tracking server answers
/health on the head's loopback (and not on its cluster address) before and during the sweep; the
head's autoscaler starts the worker; `ray submit` exits 0; every planned trial ran on the worker and
its records are in the sweep's tables on the head (results/ in the remote checkout: the relative
default) and its MLflow run is in the store the tracking server serves, nothing on the worker's
disk; after `ray down` nothing but the test's sshd is left on the head: no Ray, no tracking server.

Provided locally instead of the network (these machines are offline), on each node:
- `make setup`'s pip install. The remote checkout's .venv is pre-placed before `ray up`: a venv of
  this interpreter's base Python whose site-packages hold a .pth naming the remote checkout (what
  `pip install -e .` does) and this venv's installed, pinned dependencies (/work/main/.venv here),
  with this venv's console scripts re-pointed at it. Its `.installed` mark is newer than
  pyproject.toml, so `make setup` skips the install; the file-mount rsync (-avz, no --delete, .venv
  excluded) leaves it in place, which the test checks.
- The corpus download. The prepared cache ($PIPELINE_DATA_DIR, else ~/.cache/adam-sgd-sharpness)
  is bind-mounted read-only at the test user's ~/.cache/adam-sgd-sharpness, the default data
  directory, where `make setup`'s `python -m pipeline setup` verifies it instead of downloading.
- The base interpreter: when it lives under root's home (pyenv), which the nodes hide, its
  directory is bind-mounted back read-only at the same path. Nothing of root's home is changed.
- The head's node-type resources (`CPU: 0`: no trials on the head), which Ray's updater passes to
  `ray start` as RAY_OVERRIDE_RESOURCES for every provider but the local one, are exported in the
  head's ~/.profile.

Not covered: GPUs; Docker (and with it the container's --ulimit: cluster.yaml falls back to the
node's limit); AWS; scaling from zero (the local provider keeps its listed workers up); Ray 2.60's
default autoscaler v2 on the head (with the local provider it never launches a worker: the launcher
sets RAY_UP_enable_autoscaler_v2=0, Ray's switch back to v1, which runs the same setup and start
commands); `ray down` on a worker (the local provider only marks workers terminated, where AWS
ends the instance; the test ends the worker's processes as that would).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config import load_config
from tests.cluster.cluster_testing import ROOT, VENV_BIN, can_run

SSHD = Path("/usr/sbin/sshd")
SMOKE = ROOT / "conf" / "smoke.yaml"
PLANNED = [t.trial_id for t in load_config(SMOKE).trials]
PROJECT = "adam-sgd-sharpness"  # cluster.yaml's remote checkout, ~/adam-sgd-sharpness
SUBNET = "10.78.{}.{}"
# The keys of cluster.yaml that this test replaces or removes (all others are kept exactly).
SWAPPED = {"cluster_name", "provider", "auth"}
REMOVED = {"docker", "available_node_types", "head_node_type"}


def data_dir() -> Path:
    env = os.environ.get("PIPELINE_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / PROJECT


def why_not() -> str | None:
    """Why the launcher test cannot run here, or None."""
    reason = can_run()
    if reason:
        return reason
    if not SSHD.is_file():
        return f"needs an SSH server ({SSHD}: `apt-get install openssh-server`; `make test` installs it)"
    for tool in ("ssh", "ssh-keygen", "rsync", "useradd", "userdel", "make", "mount"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (`make test` installs openssh-server and rsync)"
    if not (data_dir() / "minilm").is_dir():
        return f"needs the prepared corpora in {data_dir()} (`make setup`)"
    return None


WHY_NOT = why_not()
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.cluster,
              pytest.mark.skipif(WHY_NOT is not None, reason=f"launcher: {WHY_NOT}")]


def _run(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kwargs)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@dataclass
class Node:
    name: str  # its network namespace
    ip: str
    disk: Path  # what it sees as the test user's home
    dir: Path  # its sshd's files and its /tmp

    @property
    def project(self) -> Path:
        return self.disk / PROJECT

    @property
    def sshd_log(self) -> Path:
        return self.dir / "sshd.log"

    def pids(self) -> list[int]:
        return [int(p) for p in _run("ip", "netns", "pids", self.name, check=False).stdout.split()]

    def processes(self) -> dict[int, str]:
        return {pid: _cmdline(pid) for pid in self.pids()}

    def logs(self, *patterns: str) -> str:
        """The end of its sshd log and of the Ray logs matching `patterns` (for failure messages)."""
        text = f"--- {self.name} sshd\n{self.sshd_log.read_text(errors='replace')[-3000:]}"
        # The newest session (not session_latest: its link points into the node's own /tmp).
        sessions = sorted((self.dir / "tmp" / "ray").glob("session_2*"))
        for pattern in patterns:
            for path in sorted(sessions[-1].glob(f"logs/{pattern}")) if sessions else []:
                text += f"\n--- {self.name} {path.name}\n{path.read_text(errors='replace')[-4000:]}"
        return text


class LauncherCluster:
    """`with LauncherCluster() as lc:` the launcher's, the head's and the worker's namespaces, the test
    user with a pre-placed venv on each node's disk, each node's sshd listening, and the launcher's
    home with a Ray token. On exit every process of the namespaces is ended by PID, and the
    namespaces, the user and all files are removed."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        # Short and world-traversable (pytest's tmp_path is under a 0700 directory): the test user's
        # home, the worker's disk, the launcher's files and the nodes' /tmp all live here.
        self.base = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))
        self.base.chmod(0o755)
        self.user = f"rl{self.tag}"
        self.home = self.base / "home"  # the test user's home: the head's disk
        self.launcher_home = self.base / "launcher"
        self.key = self.launcher_home / "id_ed25519"
        self.config_path = self.launcher_home / "cluster.yaml"
        self.cluster_name = f"launcher-test-{self.tag}"
        octet = int(self.tag[:2], 16) % 200 + 20
        self.lap, self.lap_ip = f"lap{self.tag}", SUBNET.format(octet, 1)
        self.head = Node(f"hd{self.tag}", SUBNET.format(octet, 2), self.home, self.base / "head")
        self.worker = Node(f"wk{self.tag}", SUBNET.format(octet, 3), self.base / "worker" / "home",
                           self.base / "worker")
        self.nodes = (self.head, self.worker)
        self.user_created = False
        self.namespaces: list[str] = []

    # --- set-up -------------------------------------------------------------------------------------

    def __enter__(self) -> LauncherCluster:
        try:
            self._network()
            self._user()
            for node in self.nodes:
                self._disk(node)
            # The head node type's resources (cluster.yaml: no trials on the head), as Ray's updater
            # would pass them to `ray start` with any provider but the local one.
            with open(self.home / ".profile", "a") as profile:
                profile.write("\n# tests/cluster/test_launcher.py: the head's node type\n"
                              "export RAY_OVERRIDE_RESOURCES='{\"CPU\": 0}'\n")
            _run("chown", "-R", f"{self.user}:{self.user}", str(self.home), str(self.worker.disk))
            self._launcher()
            for node in self.nodes:
                self._sshd(node)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _network(self) -> None:
        """A bridge in the launcher's namespace, the nodes' namespaces on it; each with a default route,
        as a machine has (Ray finds its node address on it), and nothing beyond: all stay offline."""
        for ns in (self.lap, *(n.name for n in self.nodes)):
            _run("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        bridge = f"br{self.tag}"
        lap = ("ip", "netns", "exec", self.lap, "ip")
        _run(*lap, "link", "add", bridge, "type", "bridge")
        _run(*lap, "addr", "add", f"{self.lap_ip}/24", "dev", bridge)
        _run(*lap, "link", "set", bridge, "up")
        for i, node in enumerate(self.nodes):
            inside, outside = f"vn{i}{self.tag}", f"vb{i}{self.tag}"
            _run(*lap, "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", node.name)
            _run(*lap, "link", "set", outside, "master", bridge)
            _run(*lap, "link", "set", outside, "up")
            here = ("ip", "netns", "exec", node.name, "ip")
            _run(*here, "addr", "add", f"{node.ip}/24", "dev", inside)
            _run(*here, "link", "set", inside, "up")
            _run(*here, "route", "add", "default", "dev", inside)

    def _user(self) -> None:
        # '*': no password, but not locked (sshd without PAM refuses keys for a locked account).
        _run("useradd", "--create-home", "--home-dir", str(self.home), "--shell", "/bin/bash",
             "--password", "*", "--user-group", self.user)
        self.user_created = True
        self.launcher_home.mkdir(mode=0o700)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.user, "-f", str(self.key))

    def _disk(self, node: Node) -> None:
        """A node's disk as a fresh machine with `make setup` run once would have it, without the
        network: the login files, the SSH key, the corpora's mount point and the project's venv."""
        if node.disk != self.home:  # the worker's: the same skeleton as useradd's
            if Path("/etc/skel").is_dir():
                shutil.copytree("/etc/skel", node.disk, symlinks=True)
            node.disk.mkdir(parents=True, exist_ok=True)
        ssh = node.disk / ".ssh"
        ssh.mkdir(mode=0o700)
        (ssh / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        (ssh / "authorized_keys").chmod(0o600)
        (node.disk / ".cache" / PROJECT).mkdir(parents=True)
        # The venv. Paths in it are as the node sees them: its disk is the user's home there.
        venv = node.project / ".venv"
        seen = self.home / PROJECT / ".venv"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        _run(str(Path(sys.base_prefix) / "bin" / f"python{version}"), "-m", "venv", "--without-pip", str(venv))
        if venv != seen:
            (venv / "pyvenv.cfg").write_text((venv / "pyvenv.cfg").read_text().replace(str(venv), str(seen)))
            for script in (venv / "bin").glob("activate*"):
                script.write_text(script.read_text().replace(str(venv), str(seen)))
        deps = Path(sysconfig.get_paths()["purelib"])  # this venv's installed dependencies
        site = venv / "lib" / f"python{version}" / "site-packages"
        # The checkout first (an editable install of it), then the pinned dependencies.
        (site / f"_{PROJECT.replace('-', '_')}.pth").write_text(f"{self.home / PROJECT}\n{deps}\n")
        ours, theirs = str(seen / "bin" / "python"), str(VENV_BIN / "python")
        for script in VENV_BIN.iterdir():
            target = venv / "bin" / script.name
            if target.exists() or target.is_symlink() or not script.is_file():
                continue  # the venv's own python and activate scripts
            if script.read_bytes()[:2] == b"#!":
                target.write_text(script.read_text().replace(theirs, ours))
                target.chmod(0o755)
            else:  # a binary (ruff)
                target.symlink_to(script)
        installed = venv / ".installed"
        installed.touch()
        stamp = max(time.time(), (ROOT / "pyproject.toml").stat().st_mtime + 1)
        os.utime(installed, (stamp, stamp))
        (venv / "PRE_PLACED").write_text("by tests/cluster/test_launcher.py\n")

    def _launcher(self) -> None:
        (self.launcher_home / "tmp").mkdir()
        token = _run(str(VENV_BIN / "ray"), "get-auth-token", "--generate", env=self.launcher_env(), check=False)
        if not (self.launcher_home / ".ray" / "auth_token").is_file():  # older Ray: the token by hand
            (self.launcher_home / ".ray").mkdir(exist_ok=True)
            (self.launcher_home / ".ray" / "auth_token").write_text(uuid.uuid4().hex)
        assert (self.launcher_home / ".ray" / "auth_token").read_text().strip(), token.stderr
        self.config_path.write_text(yaml.safe_dump(self.launcher_config(), sort_keys=False))

    def launcher_config(self) -> dict:
        config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
        # Swapped: provider (AWS -> Ray's local provider: the head and one worker at their
        # namespaces' addresses), auth (the test user and its key instead of the AMI's `ubuntu`),
        # cluster_name (unique: the launcher's state file and SSH control path are this run's).
        config["cluster_name"] = self.cluster_name
        config["provider"] = {"type": "local", "head_ip": self.head.ip, "worker_ips": [self.worker.ip]}
        config["auth"] = {"ssh_user": self.user, "ssh_private_key": str(self.key)}
        # Removed: docker (no Docker here: a node is its namespaces), available_node_types and
        # head_node_type (AWS instance types; the local provider brings its own single node type,
        # "local.cluster.node", and aborts on any other: Ray 2.60's prepare_local).
        for key in REMOVED:
            del config[key]
        return config

    def _sshd(self, node: Node) -> None:
        node.dir.mkdir(exist_ok=True)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(node.dir / "host_ed25519"))
        config = node.dir / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {node.ip}", "Port 22", f"HostKey {node.dir / 'host_ed25519'}",
            f"PidFile {node.dir / 'sshd.pid'}", f"AllowUsers {self.user}", "PermitRootLogin no",
            "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes", "AuthorizedKeysFile .ssh/authorized_keys", "StrictModes yes",
            "X11Forwarding no", "PrintMotd no", "MaxStartups 50", "MaxSessions 50", "LogLevel VERBOSE", "",
        ]))
        node.sshd_log.touch()
        with open(node.sshd_log, "ab") as log:
            subprocess.Popen(self.node_command(node, "sh", "-c", self._mounts(node) + f' && exec {SSHD} -D -e -f "$1"',
                                               node.name, str(config)),
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while "Server listening on" not in node.sshd_log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start:\n{node.sshd_log.read_text(errors='replace')}")
            time.sleep(0.2)

    def _mounts(self, node: Node) -> str:
        """A node's mount namespace: a machine of its own, as far as Ray and the project can tell."""
        steps = ["set -e"]
        if node.disk != self.home:  # its own disk as the user's home
            steps += [f"mount --bind {node.disk} {self.home}"]
        pyhome = Path(sys.base_prefix)
        hidden_python = pyhome.is_relative_to("/root")
        stage = node.dir / "stage"
        stage.mkdir()
        if hidden_python:  # reachable again after /root is hidden (mount --move keeps it)
            steps += [f"mount --bind -o ro {pyhome} {stage}"]
        steps += [f"mount --bind -o ro {data_dir()} {self.home / '.cache' / PROJECT}"]
        steps += ["mount -t tmpfs -o mode=755 tmpfs /root"]
        if hidden_python:
            steps += [f"mkdir -p {pyhome}", f"mount --move {stage} {pyhome}"]
        steps += ["mount -t tmpfs -o mode=755 tmpfs /run", "mkdir -m 755 /run/sshd"]
        # Its own /tmp (Ray's /tmp/ray, ...) with this test's directory in it at the same path, and
        # with what is mounted in that (--rbind).
        node_tmp = node.dir / "tmp"
        (node_tmp / self.base.name).mkdir(parents=True)
        node_tmp.chmod(0o1777)
        steps += [f"mount --rbind {self.base} {node_tmp / self.base.name}"]
        # The installed venv (and checkout) stay visible where they live under /tmp (a clone there, as CI's).
        for path in sorted({Path(sys.prefix).resolve(), ROOT.resolve()}):
            if path.is_relative_to("/tmp") and not path.is_relative_to(self.base):
                (node_tmp / path.relative_to("/tmp")).mkdir(parents=True, exist_ok=True)
                steps += [f"mount --rbind {path} {node_tmp / path.relative_to('/tmp')}"]
        steps += [f"mount --rbind {node_tmp} /tmp"]
        return " && ".join(steps)

    # --- running things -----------------------------------------------------------------------------

    @staticmethod
    def node_command(node: Node, *args: str) -> list[str]:
        """`args` as a node's first process: its network, PID (with /proc) and mount namespaces."""
        return ["ip", "netns", "exec", node.name, "unshare", "--mount", "--propagation", "private", "--pid",
                "--fork", "--mount-proc", *args]

    def launcher_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_", "PYTEST", "PIPELINE_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(HOME=str(self.launcher_home), TMPDIR=str(self.launcher_home / "tmp"),
                   PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}", RAY_USAGE_STATS_ENABLED="0",
                   # The head's autoscaler: v1. Ray 2.60's default v2 never launches the local
                   # provider's workers (it counts the head, of the provider's one node type, against
                   # max_workers, then drops it: "cloud instance ... no longer found").
                   RAY_UP_enable_autoscaler_v2="0")
        return env

    def ray(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """The `ray` CLI on the launcher's side, from the project directory (file_mounts' `.`)."""
        return subprocess.run(self.ray_command(*args), env=self.launcher_env(), cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)

    def ray_command(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.lap, str(VENV_BIN / "ray"), *args]

    def on_head(self, code: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Python `code` in the head's network namespace (its loopback), as root."""
        return _run("ip", "netns", "exec", self.head.name, sys.executable, "-c", code, check=False, timeout=timeout)

    def health(self, host: str = "127.0.0.1") -> bool:
        code = ("import urllib.request as u, sys; "
                f"sys.exit(0 if u.urlopen('http://{host}:5000/health', timeout=3).status == 200 else 1)")
        return self.on_head(code).returncode == 0

    # --- clean-up -----------------------------------------------------------------------------------

    def __exit__(self, *exc) -> None:
        problems = []
        # The nodes first (as `ray down` leaves them: terminating a node ends everything on it).
        for ns in reversed(self.namespaces):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for pid in _run("ip", "netns", "pids", ns, check=False).stdout.split():
                    try:
                        os.kill(int(pid), sig)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + 10
                while _run("ip", "netns", "pids", ns, check=False).stdout.split() and time.monotonic() < deadline:
                    time.sleep(0.2)
            out = _run("ip", "netns", "del", ns, check=False)
            if out.returncode:
                problems.append(f"ip netns del {ns}: {out.stderr.strip()}")
        if self.user_created:
            # The user's processes were all in the nodes' namespaces; userdel -r removes its home.
            out = _run("userdel", "--remove", self.user, check=False)
            if self.user in {p.pw_name for p in pwd.getpwall()}:
                problems.append(f"userdel {self.user}: {out.stderr.strip()}")
        # The launcher's SSH control directory (Ray's fixed place: /tmp/ray_ssh_<user>/<cluster>, the
        # user as getpass.getuser() finds it in the launcher's environment).
        env = self.launcher_env()
        user = next((env[k] for k in ("LOGNAME", "USER", "LNAME", "USERNAME") if env.get(k)),
                    pwd.getpwuid(os.getuid()).pw_name)
        user_hash = hashlib.sha256(user.encode()).hexdigest()[:10]
        control = Path("/tmp") / f"ray_ssh_{user_hash}" / hashlib.sha256(self.cluster_name.encode()).hexdigest()[:10]
        shutil.rmtree(control, ignore_errors=True)
        try:
            control.parent.rmdir()  # only if no other cluster's is in it
        except OSError:
            pass
        shutil.rmtree(self.base, ignore_errors=True)
        assert not problems, problems


def _tail(out: subprocess.CompletedProcess | str, n: int = 12000) -> str:
    if isinstance(out, str):
        return out[-n:]
    return f"exit {out.returncode}\n--- stdout\n{out.stdout[-n:]}\n--- stderr\n{out.stderr[-n:]}"


def test_ray_up_submit_down_with_cluster_yaml():
    with LauncherCluster() as lc:
        head, worker = lc.head, lc.worker
        # The copy keeps every key of cluster.yaml except the swapped and removed ones.
        original = yaml.safe_load((ROOT / "cluster.yaml").read_text())
        copy = yaml.safe_load(lc.config_path.read_text())
        assert set(original) - set(copy) == REMOVED
        assert {k: v for k, v in copy.items() if k not in SWAPPED} == {
            k: v for k, v in original.items() if k not in SWAPPED | REMOVED}

        up = lc.ray("up", str(lc.config_path), "-y", "--no-config-cache", timeout=420)
        assert up.returncode == 0, _tail(up) + "\n" + head.logs()
        # The checkout arrived without rsync_exclude's paths; the pre-placed venv is still there.
        assert (head.project / "pipeline" / "__main__.py").is_file()
        assert (head.project / ".venv" / "PRE_PLACED").is_file()
        for excluded in ("results", ".git"):  # (mlflow.db, mlruns: the tracking server's, made there)
            assert not (head.project / excluded).exists(), excluded
        # Token auth with the launcher's token (file_mounts), the shell set up by setup_commands.
        token = (lc.launcher_home / ".ray" / "auth_token").read_text()
        assert (head.disk / ".ray" / "auth_token").read_text() == token
        bashrc = (head.disk / ".bashrc").read_text()
        assert f"source ~/{PROJECT}/.venv/bin/activate" in bashrc and "export RAY_AUTH_MODE=token" in bashrc
        # The tracking server answers on the head's loopback only.
        assert lc.health(), _tail(up)
        assert not lc.health(head.ip)

        # The head's autoscaler sets up the worker (setup_commands, worker_start_ray_commands): minutes when loaded.
        deadline = time.monotonic() + 600
        while not any(_comm(pid) == "raylet" for pid in worker.pids()):
            assert time.monotonic() < deadline, "the worker did not start Ray\n" + head.logs("monitor.*") + \
                "\n" + worker.logs()
            time.sleep(2)
        assert (worker.project / ".venv" / "PRE_PLACED").is_file()
        assert (worker.disk / ".ray" / "auth_token").read_text() == token
        for local in ("mlflow.db", "mlflow-server.log"):  # the head's store and server log do not travel
            assert not (worker.project / local).exists(), local

        # README's command; results land in the remote checkout (the relative default results_dir).
        submit = subprocess.Popen(lc.ray_command("submit", str(lc.config_path), "jobs/sweep.py", "--",
                                                 "conf/smoke.yaml"),
                                  env=lc.launcher_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        checks: list[bool] = []
        deadline = time.monotonic() + 600
        try:
            while submit.poll() is None and time.monotonic() < deadline:
                checks.append(lc.health())
                time.sleep(5)
            stdout, stderr = submit.communicate(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if submit.poll() is None:
                submit.kill()
        out = subprocess.CompletedProcess(submit.args, submit.returncode, stdout, stderr)
        assert submit.returncode == 0, _tail(out)
        assert checks and all(checks), f"tracking server /health during the sweep: {checks}"
        assert f"records: {len(PLANNED)} of {len(PLANNED)} planned trials" in stdout, _tail(out)

        # Every planned trial ran on the worker (the head has no CPUs for trials) and its records are
        # in the sweep's tables on the head (the trials table: once each); nothing on the worker's disk.
        tables = head.project / "results" / "smoke" / "tables"
        trials = pq.read_table(tables / "trials.parquet").to_pylist()
        assert sorted(row["trial_id"] for row in trials) == sorted(PLANNED)
        assert {row["node_ip"] for row in trials} == {worker.ip}
        for table in ("convergence", "sharpness"):
            ids = pq.read_table(tables / f"{table}.parquet").column("trial_id").unique().to_pylist()
            assert sorted(ids) == sorted(t for t in PLANNED if t.startswith(table)), table
        assert not list(worker.disk.rglob("*.parquet")) and not (worker.project / "mlflow.db").exists()
        # The tracking server serves the sweep's store: one finished run per trial.
        query = (
            "import json, urllib.request as u\n"
            "def call(path, body=None):\n"
            "    data = None if body is None else json.dumps(body).encode()\n"
            "    req = u.Request('http://127.0.0.1:5000/api/2.0/mlflow/' + path, data=data,\n"
            "                    headers={'Content-Type': 'application/json'})\n"
            "    return json.load(u.urlopen(req, timeout=10))\n"
            "exp = call('experiments/get-by-name?experiment_name=smoke')['experiment']['experiment_id']\n"
            "runs = call('runs/search', {'experiment_ids': [exp], 'max_results': 1000}).get('runs', [])\n"
            "print(json.dumps([({t['key']: t['value'] for t in r['data'].get('tags', [])},\n"
            "                   r['info']['status']) for r in runs]))\n")
        served = lc.on_head(query)
        assert served.returncode == 0, _tail(served)
        runs = json.loads(served.stdout)
        children = {tags["trial_id"]: status for tags, status in runs if "mlflow.parentRunId" in tags}
        assert sorted(children) == sorted(PLANNED)
        assert set(children.values()) == {"FINISHED"}

        down = lc.ray("down", str(lc.config_path), "-y", timeout=180)
        assert down.returncode == 0, _tail(down)
        # Ray stopped on the head, and with it the tracking server (its watcher ends it): of the head's
        # processes only the test's sshd (and sessions it still closes) is left.
        deadline = time.monotonic() + 60
        while True:
            left = {pid: cmd for pid, cmd in head.processes().items()
                    if not cmd.startswith(("unshare ", str(SSHD), "sshd"))}
            if not left:
                break
            assert time.monotonic() < deadline, f"left running on the head after `ray down`: {left}"
            time.sleep(1)
        assert not lc.health()
