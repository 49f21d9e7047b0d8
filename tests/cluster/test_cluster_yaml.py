"""cluster.yaml is a valid Ray cluster launcher config whose every named file, command and key exists."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import jsonschema
import ray
import yaml

from pipeline.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_the_installed_ray_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(CLUSTER, schema)


def test_image_is_rays_gpu_image_of_the_pinned_version_and_python_311():
    pinned = re.search(r'"ray\[[^]]*\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert CLUSTER["docker"]["image"] == f"rayproject/ray:{pinned}-py311-gpu"
    assert ray.__version__ == pinned
    for node in CLUSTER["available_node_types"].values():
        assert node["node_config"]["ImageId"] != "latest_dlami"  # resolves to Ubuntu 18.04 / Python 3.6


def test_what_cluster_yaml_names_exists():
    assert CLUSTER["file_mounts"]["~/adam-sgd-sharpness"] == "."
    assert CLUSTER["available_node_types"]["gpu_worker"]["min_workers"] == 0
    commands = " ".join(CLUSTER["setup_commands"] + CLUSTER["head_start_ray_commands"])
    assert "make setup" in commands and "setup:" in (ROOT / "Makefile").read_text()
    for match in re.finditer(r"python -m pipeline ([a-z-]+)", commands):
        assert main([match.group(1), "--help"]) == 0, match.group(0)
    # The head starts Ray in the project directory, so `ray job submit -- python jobs/sweep.py` finds it.
    head = " ".join(CLUSTER["head_start_ray_commands"])
    assert "cd ~/adam-sgd-sharpness" in head and (ROOT / "jobs" / "sweep.py").is_file()
    # Services on the head listen on loopback only (the UI is reached through `ray attach -p`).
    assert "--dashboard-host=127.0.0.1" in head and "--host 127.0.0.1" in head
    assert all("0.0.0.0" not in shlex.join([c]) for c in CLUSTER["head_start_ray_commands"])
