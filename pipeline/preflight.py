"""Checks of a validated sweep against this machine, before Ray starts: paths, data, resources, the cluster.

The schema (pipeline.config) checks what a config says; these check what the machine can do with
it: a results directory that takes a write, names the filesystem accepts, prepared corpora that
hold at least one batch, cores and GPUs a trial can get, a Ray address that answers. Each raises
ConfigError (one line naming the key) so that `sweep` exits 2 in seconds instead of failing trials.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, SweepConfig, block_workload
from pipeline.workloads import validate_workload_spec

# Longest suffix a file or folder name gets beyond its stem: atomic writes' ".<name>.<pid>.<hex>.tmp".
TEMP_SUFFIX = 40
# A deepest results path: trials/<trial_id>/records/<table>.parquet, with room for the table name.
DEEPEST = 80
# The Ray launcher writes this on an autoscaling cluster's head: nodes may join after the sweep starts.
AUTOSCALER_CONFIG = Path("~/ray_bootstrap_config.yaml")


def preflight(config: SweepConfig) -> None:
    """Every check that needs no Ray: paths, data, local resources or the cluster's address."""
    check_writable(config.layout.sweep_dir)
    check_names(config)
    check_data(config)
    if config.ray.address is None:
        check_local_resources(config)
    else:
        check_address(config)


def check_writable(path: Path) -> None:
    """The sweep directory can be created and written: a real write (root passes os.access
    everywhere, /proc included), in the nearest existing folder; nothing is left behind, not even a
    changed folder time."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"results_dir: cannot create {path}: {probe} is not a directory")
    for folder in (probe, path / "trials"):
        if not folder.is_dir():
            continue
        test = folder / f".write-test.{os.getpid()}.{secrets.token_hex(4)}"
        times = folder.stat()
        try:
            fd = os.open(test, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            test.unlink()
            os.utime(folder, ns=(times.st_atime_ns, times.st_mtime_ns))
        except OSError as err:
            raise ConfigError(f"results_dir: cannot write in {folder} ({err.strerror}); "
                              f"expected a writable folder for {path}") from None


def check_names(config: SweepConfig) -> None:
    """Every folder and file name the sweep will create fits the filesystem's limits."""
    probe = config.layout.sweep_dir
    while not probe.exists():
        probe = probe.parent
    name_max = _pathconf(probe, "PC_NAME_MAX", 255)
    path_max = _pathconf(probe, "PC_PATH_MAX", 4096)
    for part in config.layout.sweep_dir.parts:
        if len(part.encode()) + TEMP_SUFFIX > name_max:
            raise ConfigError(f"results_dir: folder name {part[:40]!r}... is {len(part.encode())} bytes; "
                              f"expected at most {name_max - TEMP_SUFFIX}")
    longest = max(config.trials, key=lambda t: len(t.trial_id.encode()))
    if len(longest.trial_id.encode()) + TEMP_SUFFIX > name_max:
        raise ConfigError(f"experiments: trial id {longest.trial_id[:40]!r}... is {len(longest.trial_id)} "
                          f"bytes; expected at most {name_max - TEMP_SUFFIX} (shorten `label` or `name`)")
    deepest = len(str(config.layout.trial_dir(longest.trial_id)).encode()) + DEEPEST
    if deepest > path_max:
        raise ConfigError(f"results_dir: paths under it reach {deepest} bytes; expected at most {path_max} "
                          "(choose a shorter results_dir or name)")


def _pathconf(path: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(path, name)
    except (OSError, ValueError):
        return default


def check_data(config: SweepConfig) -> None:
    """Each block's local corpus is prepared and holds at least a train and a test batch.

    Hub sources are read on the workers (they need the network); they are not checked here.
    """
    from pipeline.data.cache import DataMissingError, resolve_data_dir

    bounds: dict[str, tuple[int, int]] = {}
    for index, block in enumerate(config.experiments):
        spec = validate_workload_spec(block_workload(block, config))
        if spec["source"] != "local":
            continue
        key = json.dumps(spec, sort_keys=True, default=str)
        where = f"experiments.{index}.workload"
        at_most = "at most " if spec["name"] == "causal_lm" else ""
        if key not in bounds:
            given = "data_dir" if config.data_dir is not None else f"{where}.data_dir"
            folder = resolve_data_dir(spec["data_dir"])
            if not folder.is_dir():
                raise ConfigError(f"{given}: {folder} does not exist; expected the prepared corpora "
                                  f"(python -m pipeline setup --data-dir {folder})")
            try:
                bounds[key] = example_bounds(spec)
            except DataMissingError as err:
                raise ConfigError(f"{given}: {err}") from None
            train, test = bounds[key]
            for split, bound, size_key in (("training", train, "batch_size"), ("test", test, "test_batch_size")):
                if spec[size_key] > bound:
                    raise ConfigError(f"{where}.{size_key}: {spec[size_key]} exceeds the {bound} {split} examples "
                                      f"{at_most}in the data; expected at most {bound}")
        if block.experiment == "sharpness":  # the fixed measurement batch (paper App. B) is drawn from a split
            measure = block.measure
            bound = bounds[key][0 if measure.batch == "train" else 1]
            if measure.batch_size > bound:
                raise ConfigError(f"experiments.{index}.measure.batch_size: {measure.batch_size} exceeds the {bound} "
                                  f"{measure.batch} examples {at_most}in the data; expected at most {bound}")


def example_bounds(spec: Mapping[str, Any]) -> tuple[int, int]:
    """(train, test): upper bounds on the examples a local workload builds from its corpus (exact
    counts except the causal LM's, whose rows of seq_len tokens are bounded by its bytes: a byte-level
    BPE token covers at least one byte). Reads one or two columns, never tokenizes."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipeline.data.loaders import REVIEW_CORPORA, minilm_dir, source_dir

    name, data_dir = spec["name"], spec["data_dir"]
    counts: dict[str, int] = {}
    if name == "image":
        folder = source_dir("fashion_mnist", data_dir)
        for split in ("train", "test"):
            counts[split] = int(np.load(folder / f"{split}_labels.npy", mmap_mode="r").shape[0])
    elif name == "causal_lm":
        table = pq.read_table(source_dir("stdlib_code", data_dir) / "code.parquet", columns=["text", "split"])
        for split in ("train", "test"):
            texts = table.filter(pc.equal(table["split"], split))["text"]
            sizes = sorted((len(t.encode()) + 1 for t in texts.to_pylist()), reverse=True)  # + its end-of-text
            files = _capped(len(sizes), spec[f"max_{split}_examples"])
            counts[split] = sum(sizes[:files]) // spec["seq_len"]
        return counts["train"], counts["test"]
    else:
        source, file = (("bible_en_fr", "pairs.parquet") if name == "translation"
                        else REVIEW_CORPORA[spec["corpus"]])
        if name == "classification" and spec["pretrained"]:
            minilm_dir(data_dir)  # the local pretrained BERT must be prepared too
        splits = pq.read_table(source_dir(source, data_dir) / file, columns=["split"])["split"]
        for split in ("train", "test"):
            counts[split] = int(pc.sum(pc.equal(splits, split)).as_py() or 0)
    return tuple(_capped(counts[s], spec[f"max_{s}_examples"]) for s in ("train", "test"))  # type: ignore[return-value]


def _capped(count: int, cap: int | None) -> int:
    return count if cap is None else min(count, cap)


def check_local_resources(config: SweepConfig) -> None:
    """A local Ray offers this machine's cores (or ray.num_cpus) and its GPUs, and no custom resources:
    a trial asking for more would wait forever."""
    wanted = config.resources_per_trial
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    offered = config.ray.num_cpus or cores
    source = "ray.num_cpus" if config.ray.num_cpus else "this machine's cores"
    if wanted.cpu > offered:
        raise ConfigError(f"resources_per_trial.cpu: {wanted.cpu:g} per trial, but the local Ray has {offered} "
                          f"({source}); expected at most {offered}")
    if wanted.custom:
        raise ConfigError(f"resources_per_trial.custom: {sorted(wanted.custom)} are never offered by a local Ray; "
                          "expected {} (custom resources need a cluster: ray.address)")
    if wanted.gpu > 0 or config.device == "cuda":
        gpus = local_gpus()
        if config.device == "cuda" and gpus == 0:
            raise ConfigError("device: 'cuda', but this machine has no GPU that torch can use; "
                              "expected device=cpu (or auto) and resources_per_trial.gpu=0")
        if wanted.gpu > gpus:
            raise ConfigError(f"resources_per_trial.gpu: {wanted.gpu:g} per trial, but this machine has {gpus} "
                              f"GPU(s); expected at most {gpus}")


def local_gpus() -> int:
    """GPUs torch sees here (Ray's local GPU count comes from the same CUDA devices)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def ray_address(address: str) -> str:
    """The host:port that `address` names; `auto`: the cluster ray.init would join, found as Ray finds
    it ($RAY_ADDRESS, the address the last `ray start` here recorded, a running GCS)."""
    if address == "auto":
        from ray._private.services import get_ray_address_from_environment  # Ray's own lookup

        try:
            address = get_ray_address_from_environment("auto", None) or ""
        except ConnectionError:
            address = ""
        if not address or address == "auto":
            raise ConfigError("ray.address: 'auto' found no running Ray cluster on this machine "
                              "(no $RAY_ADDRESS, no `ray start` here); expected host:port of a Ray head or null")
    return address.removeprefix("ray://")


def check_address(config: SweepConfig) -> None:
    """The Ray head answers on its port within ray.connect_timeout_s (ray.init itself would retry
    for minutes)."""
    address = ray_address(config.ray.address or "")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"ray.address: {config.ray.address!r} is not an address; expected host:port of a Ray head, "
                          "auto, or null for a local Ray")
    timeout = config.ray.connect_timeout_s
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or type(err).__name__)
        found = f" (found for {config.ray.address!r})" if address != config.ray.address else ""
        raise ConfigError(f"ray.address: no Ray head answers at {address}{found} within {timeout:g} s ({reason}); "
                          "expected the address of a running cluster (ray.connect_timeout_s sets the wait)") from None


def check_cluster_resources(config: SweepConfig, nodes: Iterable[Mapping[str, Any]]) -> None:
    """After joining a cluster: some alive node offers a whole trial's resources (ray.nodes() rows).

    On an autoscaling cluster (the launcher's config on this head) nodes may still join: not checked.
    """
    if AUTOSCALER_CONFIG.expanduser().is_file():
        return
    wanted = config.resources_per_trial
    need = {"CPU": wanted.cpu, "GPU": wanted.gpu, **wanted.custom}
    need = {k: v for k, v in need.items() if v > 0}
    offers = [dict(n.get("Resources") or {}) for n in nodes if n.get("Alive", True)]
    if any(all(offer.get(k, 0) >= v for k, v in need.items()) for offer in offers):
        return
    keys = {"CPU": "cpu", "GPU": "gpu"}
    most = {k: max((o.get(k, 0) for o in offers), default=0) for k in need}
    short = [k for k in need if most[k] < need[k]] or list(need)
    key = keys.get(short[0], f"custom.{short[0]}")
    raise ConfigError(f"resources_per_trial.{key}: {need[short[0]]:g} per trial, but no node of the cluster at "
                      f"{config.ray.address} offers it (largest: {most[short[0]]:g}); expected at most "
                      f"{most[short[0]]:g}")
