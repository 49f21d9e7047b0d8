"""The launcher path, end to end, with README's commands ("Running on a GPU cluster"):

    ray up CLUSTER_YAML -y --no-config-cache
    ray submit CLUSTER_YAML jobs/sweep.py -- conf/smoke.yaml
    ray down CLUSTER_YAML -y

CLUSTER_YAML is a copy of cluster.yaml in which only the keys that name AWS are swapped (see
`launcher_config`: provider -> Ray's `local` provider, auth -> a test user and key, docker and the
AWS node types removed); file_mounts, rsync_exclude, setup_commands (`make setup`) and
head_start_ray_commands (Ray with token auth, then `python -m pipeline tracking-server`) run as
written. The launcher runs in a network namespace of its own, joined by a veth pair to the head's;
the head is a network, PID and mount namespace (its own /tmp and /run, root's home hidden) where an
sshd started by the test listens on the head's address only and logs in a test user whose home the
test creates (under its temporary directory) and deletes (userdel -r).

Checked: `ray up` succeeds; the project arrives without rsync_exclude's paths and the pre-placed
venv survives the sync; the tracking server answers /health on the head's loopback (and not on its
cluster address) during the sweep; `ray submit` exits 0, with every planned trial's records in the
sweep's tables (results/ in the remote checkout, the relative default) and its MLflow run in the
store the tracking server serves; after `ray down` no Ray process and no tracking server is left.

Provided locally instead of the network (these machines are offline):
- `make setup`'s pip install. The remote checkout's .venv is pre-placed before `ray up`: a venv of
  this interpreter's base Python whose site-packages hold a .pth naming the remote checkout (what
  `pip install -e .` does) and this venv's installed, pinned dependencies (/work/main/.venv here),
  with this venv's console scripts re-pointed at it. Its `.installed` mark is newer than
  pyproject.toml, so `make setup` skips the install; `ray up`'s rsync (-avz, no --delete, .venv
  excluded) leaves it in place, which the test checks.
- The corpus download. The prepared cache ($PIPELINE_DATA_DIR, else ~/.cache/adam-sgd-sharpness)
  is bind-mounted read-only at the test user's ~/.cache/adam-sgd-sharpness on the head, the default
  data directory, where `make setup`'s `python -m pipeline setup` verifies it instead of downloading.
- The base interpreter: when it lives under root's home (pyenv), which the head hides, its directory
  is bind-mounted back read-only at the same path. Nothing of root's home is changed.

Not covered: GPU workers (the local provider has no node types; the head runs the trials, its CPUs
detected by Ray instead of cluster.yaml's `CPU: 0`), Docker, and AWS itself.
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
# The keys of cluster.yaml that this test replaces (all others are kept exactly).
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


class LauncherCluster:
    """`with LauncherCluster() as lc:` the launcher's and the head's namespaces, the test user with its
    pre-placed venv, the head's sshd listening, and the launcher's home with a Ray token. On exit every
    process of both namespaces is ended by PID, the namespaces, the user and all files are removed."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        # Short and world-traversable (pytest's tmp_path is under a 0700 directory): the test user's
        # home, the launcher's files and the head's /tmp all live here.
        self.base = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))
        self.base.chmod(0o755)
        self.user = f"rl{self.tag}"
        self.home = self.base / "home"
        self.project = self.home / PROJECT
        self.launcher_home = self.base / "launcher"
        self.key = self.launcher_home / "id_ed25519"
        self.config_path = self.launcher_home / "cluster.yaml"
        self.cluster_name = f"launcher-test-{self.tag}"
        octet = int(self.tag[:2], 16) % 200 + 20
        self.lap, self.head = f"lap{self.tag}", f"hd{self.tag}"
        self.lap_ip, self.head_ip = SUBNET.format(octet, 1), SUBNET.format(octet, 2)
        self.sshd_log = self.base / "sshd" / "sshd.log"
        self.user_created = False
        self.namespaces: list[str] = []

    # --- set-up -------------------------------------------------------------------------------------

    def __enter__(self) -> LauncherCluster:
        try:
            self._network()
            self._user()
            self._venv()
            self._launcher()
            self._sshd()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _network(self) -> None:
        for ns in (self.lap, self.head):
            _run("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        a, b = f"vl{self.tag}", f"vh{self.tag}"
        _run("ip", "link", "add", a, "netns", self.lap, "type", "veth", "peer", "name", b, "netns", self.head)
        for ns, dev, ip in ((self.lap, a, self.lap_ip), (self.head, b, self.head_ip)):
            _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/24", "dev", dev)
            _run("ip", "netns", "exec", ns, "ip", "link", "set", dev, "up")
            # A default route, as a machine has: Ray then finds its node address on this device.
            # Nothing lies beyond it: the namespaces stay offline.
            _run("ip", "netns", "exec", ns, "ip", "route", "add", "default", "dev", dev)

    def _user(self) -> None:
        # '*': no password, but not locked (sshd without PAM refuses keys for a locked account).
        _run("useradd", "--create-home", "--home-dir", str(self.home), "--shell", "/bin/bash",
             "--password", "*", "--user-group", self.user)
        self.user_created = True
        ssh = self.home / ".ssh"
        ssh.mkdir(mode=0o700)
        self.launcher_home.mkdir(mode=0o700)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.user, "-f", str(self.key))
        (ssh / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        (ssh / "authorized_keys").chmod(0o600)
        # The mount point of the prepared corpora (bind-mounted on the head, read-only).
        (self.home / ".cache" / PROJECT).mkdir(parents=True)

    def _venv(self) -> None:
        """The remote checkout's .venv as `make setup` would leave it, without the network."""
        venv = self.project / ".venv"
        base_python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
        _run(str(base_python), "-m", "venv", "--without-pip", str(venv))
        deps = Path(sysconfig.get_paths()["purelib"])  # this venv's installed dependencies
        site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        # The checkout first (an editable install of it), then the pinned dependencies.
        (site / f"_{PROJECT.replace('-', '_')}.pth").write_text(f"{self.project}\n{deps}\n")
        ours, theirs = str(venv / "bin" / "python"), str(VENV_BIN / "python")
        for script in VENV_BIN.iterdir():
            target = venv / "bin" / script.name
            if target.exists() or target.is_symlink() or not script.is_file():
                continue  # the venv's own python and activate scripts
            head = script.read_bytes()[:2]
            if head == b"#!":
                target.write_text(script.read_text().replace(theirs, ours))
                target.chmod(0o755)
            else:  # a binary (ruff)
                target.symlink_to(script)
        installed = venv / ".installed"
        installed.touch()
        stamp = max(time.time(), (ROOT / "pyproject.toml").stat().st_mtime + 1)
        os.utime(installed, (stamp, stamp))
        (venv / "PRE_PLACED").write_text("by tests/cluster/test_launcher.py\n")
        _run("chown", "-R", f"{self.user}:{self.user}", str(self.home))

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
        # Swapped: provider (AWS -> Ray's local provider; the head at its namespace's address, no
        # worker_ips), auth (the test user and its key instead of the AMI's `ubuntu`), cluster_name
        # (unique: the launcher's state file and SSH control path are this run's).
        config["cluster_name"] = self.cluster_name
        config["provider"] = {"type": "local", "head_ip": self.head_ip, "worker_ips": []}
        config["auth"] = {"ssh_user": self.user, "ssh_private_key": str(self.key)}
        # Removed: docker (no Docker here: the node is the host), available_node_types and
        # head_node_type (AWS instance types; the local provider brings its own single node type,
        # "local.cluster.node", and aborts on any other: Ray 2.60's prepare_local).
        for key in REMOVED:
            del config[key]
        return config

    def _sshd(self) -> None:
        sshd = self.base / "sshd"
        sshd.mkdir()
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(sshd / "host_ed25519"))
        (sshd / "sshd_config").write_text("\n".join([
            f"ListenAddress {self.head_ip}", "Port 22", f"HostKey {sshd / 'host_ed25519'}",
            f"PidFile {sshd / 'sshd.pid'}", f"AllowUsers {self.user}", "PermitRootLogin no",
            "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes", "AuthorizedKeysFile .ssh/authorized_keys", "StrictModes yes",
            "X11Forwarding no", "PrintMotd no", "MaxStartups 50", "MaxSessions 50", "LogLevel VERBOSE", "",
        ]))
        self.sshd_log.touch()
        log = open(self.sshd_log, "ab")  # noqa: SIM115 - handed to the head's process
        subprocess.Popen(self.head_command("sh", "-c", self._head_mounts() + f' && exec {SSHD} -D -e -f "$1"',
                                           "head", str(sshd / "sshd_config")),
                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while "Server listening on" not in self.sshd_log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start:\n{self.sshd_log.read_text(errors='replace')}")
            time.sleep(0.2)

    def _head_mounts(self) -> str:
        """The head's mount namespace: a machine of its own, as far as the launcher can tell."""
        steps = ["set -e"]
        pyhome = Path(sys.base_prefix)
        hidden_python = pyhome.is_relative_to("/root")
        stage = self.base / "stage"
        stage.mkdir()
        if hidden_python:  # reachable again after /root is hidden (mount --move keeps it)
            steps += [f"mount --bind -o ro {pyhome} {stage}"]
        steps += [f"mount --bind -o ro {data_dir()} {self.home / '.cache' / PROJECT}"]
        steps += ["mount -t tmpfs -o mode=755 tmpfs /root"]
        if hidden_python:
            steps += [f"mkdir -p {pyhome}", f"mount --move {stage} {pyhome}"]
        steps += ["mount -t tmpfs -o mode=755 tmpfs /run", "mkdir -m 755 /run/sshd"]
        # Its own /tmp (Ray's /tmp/ray, ...) with this test's directory in it, at the same path (with
        # the corpora mounted in it: --rbind).
        node_tmp = self.base / "tmp"
        (node_tmp / self.base.name).mkdir(parents=True)
        node_tmp.chmod(0o1777)
        steps += [f"mount --rbind {self.base} {node_tmp / self.base.name}", f"mount --rbind {node_tmp} /tmp"]
        return " && ".join(steps)

    # --- running things -----------------------------------------------------------------------------

    def head_command(self, *args: str) -> list[str]:
        """`args` as the head's first process: its network, PID (with /proc) and mount namespaces."""
        return ["ip", "netns", "exec", self.head, "unshare", "--mount", "--propagation", "private", "--pid",
                "--fork", "--mount-proc", *args]

    def launcher_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_", "PYTEST", "PIPELINE_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(HOME=str(self.launcher_home), TMPDIR=str(self.launcher_home / "tmp"),
                   PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}", RAY_USAGE_STATS_ENABLED="0")
        return env

    def ray(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """The `ray` CLI on the launcher's side, from the project directory (file_mounts' `.`)."""
        return subprocess.run(self.ray_command(*args), env=self.launcher_env(), cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)

    def ray_command(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.lap, str(VENV_BIN / "ray"), *args]

    def on_head(self, code: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Python `code` in the head's network namespace (its loopback), as root."""
        return _run("ip", "netns", "exec", self.head, sys.executable, "-c", code, check=False, timeout=timeout)

    def health(self, host: str = "127.0.0.1") -> bool:
        code = ("import urllib.request as u, sys; "
                f"sys.exit(0 if u.urlopen('http://{host}:5000/health', timeout=3).status == 200 else 1)")
        return self.on_head(code).returncode == 0

    def head_processes(self) -> dict[int, str]:
        out = _run("ip", "netns", "pids", self.head, check=False).stdout
        return {int(p): _cmdline(int(p)) for p in out.split()}

    # --- clean-up -----------------------------------------------------------------------------------

    def __exit__(self, *exc) -> None:
        for ns in self.namespaces:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for pid in _run("ip", "netns", "pids", ns, check=False).stdout.split():
                    try:
                        os.kill(int(pid), sig)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + 10
                while _run("ip", "netns", "pids", ns, check=False).stdout.split() and time.monotonic() < deadline:
                    time.sleep(0.2)
            _run("ip", "netns", "del", ns, check=False)
        if self.user_created:
            # The user's processes were all in the head's namespaces; userdel -r removes its home.
            out = _run("userdel", "--remove", self.user, check=False)
            assert self.user not in {p.pw_name for p in pwd.getpwall()}, out.stderr
        # The launcher's SSH control directory (Ray's fixed place: /tmp/ray_ssh_<user>/<cluster>).
        user_hash = hashlib.sha256(pwd.getpwuid(os.getuid()).pw_name.encode()).hexdigest()[:10]
        control = Path("/tmp") / f"ray_ssh_{user_hash}" / hashlib.sha256(self.cluster_name.encode()).hexdigest()[:10]
        shutil.rmtree(control, ignore_errors=True)
        try:
            control.parent.rmdir()  # only if no other cluster's is in it
        except OSError:
            pass
        shutil.rmtree(self.base, ignore_errors=True)


def _tail(out: subprocess.CompletedProcess | str, n: int = 12000) -> str:
    if isinstance(out, str):
        return out[-n:]
    return f"exit {out.returncode}\n--- stdout\n{out.stdout[-n:]}\n--- stderr\n{out.stderr[-n:]}"


def test_ray_up_submit_down_with_cluster_yaml():
    with LauncherCluster() as lc:
        # The copy keeps every key of cluster.yaml except the swapped and removed ones.
        original = yaml.safe_load((ROOT / "cluster.yaml").read_text())
        copy = yaml.safe_load(lc.config_path.read_text())
        assert set(original) - set(copy) == REMOVED
        assert {k: v for k, v in copy.items() if k not in SWAPPED} == {
            k: v for k, v in original.items() if k not in SWAPPED | REMOVED}

        up = lc.ray("up", str(lc.config_path), "-y", "--no-config-cache", timeout=420)
        assert up.returncode == 0, _tail(up) + "\n--- sshd\n" + _tail(lc.sshd_log.read_text(errors="replace"))
        # The checkout arrived without rsync_exclude's paths; the pre-placed venv is still there.
        assert (lc.project / "pipeline" / "__main__.py").is_file()
        assert (lc.project / ".venv" / "PRE_PLACED").is_file()
        for excluded in ("results", ".git"):  # (mlflow.db, mlruns: the tracking server's, made there)
            assert not (lc.project / excluded).exists(), excluded
        # Token auth with the launcher's token (file_mounts), the shell set up by setup_commands.
        token = (lc.launcher_home / ".ray" / "auth_token").read_text()
        assert (lc.home / ".ray" / "auth_token").read_text() == token
        bashrc = (lc.home / ".bashrc").read_text()
        assert f"source ~/{PROJECT}/.venv/bin/activate" in bashrc and "export RAY_AUTH_MODE=token" in bashrc
        # The tracking server answers on the head's loopback only.
        assert lc.health(), _tail(up)
        assert not lc.health(lc.head_ip)

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

        # Every planned trial's records are in the sweep's tables (the trials table: once each).
        tables = lc.project / "results" / "smoke" / "tables"
        assert sorted(pq.read_table(tables / "trials.parquet").column("trial_id").to_pylist()) == sorted(PLANNED)
        for table in ("convergence", "sharpness"):
            ids = pq.read_table(tables / f"{table}.parquet").column("trial_id").unique().to_pylist()
            assert sorted(ids) == sorted(t for t in PLANNED if t.startswith(table)), table
        nodes = set(pq.read_table(tables / "trials.parquet").column("node_ip").to_pylist())
        assert nodes == {lc.head_ip}, nodes
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
            left = {pid: cmd for pid, cmd in lc.head_processes().items()
                    if not cmd.startswith(("unshare ", str(SSHD), "sshd"))}
            if not left:
                break
            assert time.monotonic() < deadline, f"left running after `ray down`: {left}"
            time.sleep(1)
        assert not lc.health()
