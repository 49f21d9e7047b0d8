"""Bad input that only the machine can refuse: `python -m pipeline sweep` exits 2 with one `error:` line
naming the key, no traceback, in seconds, and Ray never starts (its temp folder is never made)."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.preflight import check_cluster_resources, example_bounds, local_gpus
from pipeline.workloads import validate_workload_spec

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "conf" / "smoke.yaml"
# Seconds per case (issue 10: bad input is refused in under 20 s). The CPU seconds of the command
# must stay under it; its wall time too, stretched by how many times the machine is oversubscribed
# (CI shares its cores: a load of 8 on 2 cores makes every second four).
WALL_LIMIT = 20.0

# (case, overrides, what the error line must name); each is one invocation over conf/smoke.yaml.
CASES = [
    ("unwritable results_dir (root passes os.access under /proc)", ["results_dir=/proc/results"], "results_dir"),
    ("300-character name", ["name=" + "n" * 300], "name:"),
    ("missing data_dir", ["data_dir=/nonexistent/corpora"], "data_dir:"),
    ("batch larger than the data", ["experiments.0.workload.batch_size=100000000"], "workload.batch_size:"),
    ("test batch larger than the data", ["experiments.1.workload.test_batch_size=100000000"],
     "workload.test_batch_size:"),
    ("measurement batch larger than the data", ["experiments.0.measure.batch_size=100000000",
                                                "experiments.0.measure.sub_batch_size=null"], "measure.batch_size:"),
    ("invalid model size", ["experiments.0.workload.model.num_layers=-1"], "workload.model.num_layers:"),
    ("measure.at beyond steps", ["experiments.0.measure.at=[0, 500]"], "measure.at:"),
    ("more cores than the machine", ["resources_per_trial.cpu=64"], "resources_per_trial.cpu:"),
    ("more cores than ray.num_cpus", ["ray.num_cpus=1", "resources_per_trial.cpu=2"], "resources_per_trial.cpu:"),
    ("custom resource on a local Ray", ["resources_per_trial.custom.worker_node=1"], "resources_per_trial.custom:"),
    ("unreachable ray.address", ["ray.address=10.255.255.1:6379", "ray.connect_timeout_s=3"], "ray.address:"),
    ("ray.address not host:port", ["ray.address=nowhere"], "ray.address:"),
    ("ray.address=auto with no reachable cluster", ["ray.address=auto", "ray.connect_timeout_s=3"], "ray.address:"),
    ("absurd step count", ["experiments.0.steps=1000000000000000"], "less than or equal to 10000000"),
]


def sweep(tmp_path: Path, config: Path, overrides: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """The command's result, its wall seconds and its CPU seconds (user + system, its children's too)."""
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray-tmp"), "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    base = [f"results_dir={tmp_path / 'results'}", f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipeline", "sweep", str(config), *base, *overrides],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    wall, after = time.monotonic() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    return done, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def assert_refused(tmp_path: Path, done: subprocess.CompletedProcess, wall: float, cpu: float, names: str) -> None:
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    assert names in lines[0] and ("expected" in lines[0] or "should be" in lines[0]), lines[0]
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "ray-tmp").exists(), "Ray started"
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()
    oversubscribed = max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    assert cpu < WALL_LIMIT and wall < WALL_LIMIT * oversubscribed, f"{wall:.1f} s wall, {cpu:.1f} s CPU"


@pytest.mark.parametrize(("case", "overrides", "names"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_ray(tmp_path, case, overrides, names):
    done, wall, cpu = sweep(tmp_path, SMOKE, overrides)
    assert_refused(tmp_path, done, wall, cpu, names)


def test_a_config_that_is_not_utf8_is_refused(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes(SMOKE.read_bytes().replace(b"name: smoke", b"name: smoke  # caf\xe9", 1))
    done, wall, cpu = sweep(tmp_path, config, [])
    assert_refused(tmp_path, done, wall, cpu, "latin1.yaml: not UTF-8")


@pytest.mark.skipif(local_gpus() > 0, reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused(tmp_path):
    done, wall, cpu = sweep(tmp_path, SMOKE, ["device=cuda", "resources_per_trial.gpu=1"])
    assert_refused(tmp_path, done, wall, cpu, "device:")
    done, wall, cpu = sweep(tmp_path, SMOKE, ["resources_per_trial.gpu=1"])  # device auto, a GPU asked for
    assert_refused(tmp_path, done, wall, cpu, "resources_per_trial.gpu:")


def test_the_step_bound_is_stated(tmp_path):
    with pytest.raises(ConfigError, match=r"steps: .*less than or equal to 10000000"):
        load_config(SMOKE, ["experiments.0.steps=1000000000000000"])


def test_example_bounds_hold_the_built_workload():
    """The bounds the batch-size check uses are at least what the tiny workloads really build."""
    from pipeline.workloads import build_workload

    for name, extra in (("causal_lm", {"seq_len": 32}), ("image", {}), ("translation", {})):
        spec = validate_workload_spec({"name": name, "size": "tiny", **extra})
        train, test = example_bounds(spec)
        built = build_workload(spec, seed=0, device="cpu")
        rows = len(next(iter(built._train.values())))
        assert rows <= train and test >= spec["test_batch_size"]
        if name != "causal_lm":  # exact counts, the caps applied
            assert train == rows == spec["max_train_examples"]


def test_cluster_resources_are_checked_against_the_nodes(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.preflight.AUTOSCALER_CONFIG", tmp_path / "absent.yaml")
    nodes = [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}}, {"Alive": False, "Resources": {"GPU": 4.0}}]
    config = load_config(SMOKE, ["ray.address=10.0.0.1:6379", "resources_per_trial.gpu=1"])
    check_cluster_resources(config, nodes)  # one node holds a whole trial
    config = load_config(SMOKE, ["ray.address=10.0.0.1:6379", "resources_per_trial.gpu=2"])
    with pytest.raises(ConfigError, match=r"resources_per_trial.gpu: 2 per trial, .*largest: 1\)"):
        check_cluster_resources(config, nodes)  # the dead node's four GPUs do not count
    (tmp_path / "absent.yaml").write_text("cluster_name: x\n")  # an autoscaling cluster: nodes may join
    check_cluster_resources(config, nodes)


@pytest.mark.slow
def test_a_cluster_that_cannot_hold_a_trial_is_refused(tmp_path):
    """A real one-CPU Ray head (`ray start --head`, its own HOME and temp folder, ended by its process
    group); a sweep that joins it asking four CPUs a trial exits 2 instead of waiting forever."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    home = tmp_path / "home"
    home.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    env = {**os.environ, "HOME": str(home), "RAY_TMPDIR": ray_tmp, "PYTHONPATH": str(ROOT),
           "PIPELINE_DATA_DIR": os.environ.get("PIPELINE_DATA_DIR", str(Path.home() / ".cache/adam-sgd-sharpness"))}
    env.pop("RAY_ADDRESS", None)
    ray = Path(sys.executable).with_name("ray")
    log = (tmp_path / "head.log").open("wb")
    head = subprocess.Popen([str(ray), "start", "--head", f"--port={port}", "--num-cpus=1", "--block",
                             "--include-dashboard=false", "--disable-usage-stats", "--node-ip-address=127.0.0.1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert head.poll() is None and time.monotonic() < deadline, (tmp_path / "head.log").read_text()[-3000:]
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            time.sleep(1)
        base = [f"results_dir={tmp_path / 'results'}", f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                f"ray.address=127.0.0.1:{port}", "resources_per_trial.cpu=4"]
        done = subprocess.run([sys.executable, "-m", "pipeline", "sweep", str(SMOKE), *base], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)
        # Joining a cluster, Ray's own logger may warn first (here: no route to find this node's IP).
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
        assert done.stderr.splitlines()[-1] == errors[0] and "Traceback" not in done.stderr
        assert errors[0].startswith("error: resources_per_trial.cpu: 4 per trial, but no node of the cluster")
        assert "largest: 1" in errors[0]
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                head.wait(timeout=20)
        shutil.rmtree(ray_tmp, ignore_errors=True)
