"""Sweep configuration: the schema, YAML loading, dotted overrides, validation and the trial grid."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationError

from pipeline.config_yaml import ConfigError, apply_overrides, read_config_file
from pipeline.experiments import EXPERIMENTS
from pipeline.optim import ALGORITHMS, make_rule
from pipeline.workloads import WORKLOADS
from pipeline.workloads.base import validate_workload_spec


def _as_list(value: Any) -> Any:
    """A scalar where a grid axis is expected means a one-point axis (`lr: 0.1` == `lr: [0.1]`)."""
    return value if isinstance(value, list) else [value]


PosInt = Annotated[StrictInt, Field(gt=0)]
NonNegInt = Annotated[StrictInt, Field(ge=0)]
PosFloat = Annotated[StrictFloat, Field(gt=0)]
Fraction = Annotated[StrictFloat, Field(ge=0, le=1)]
ClipTarget = Literal["grad", "update"]
# Grid axes: a list, or a scalar for a one-point axis.
LrAxis = Annotated[list[PosFloat | None], BeforeValidator(_as_list)]
FractionAxis = Annotated[list[Fraction], BeforeValidator(_as_list)]
TargetAxis = Annotated[list[ClipTarget], BeforeValidator(_as_list)]
SeedAxis = Annotated[list[NonNegInt], BeforeValidator(_as_list)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RayConfig(_Strict):
    address: str | None = None  # None: start a local Ray; "auto": join the cluster this runs in
    num_cpus: PosInt | None = None  # local Ray only; None: every core
    max_concurrent_trials: PosInt | None = None  # None: as many as the resources allow


class Resources(_Strict):
    cpu: PosFloat = 1.0  # also the trial's torch thread count (rounded down, at least 1)
    gpu: Annotated[StrictFloat, Field(ge=0)] = 0.0  # a fraction shares one GPU between trials


class ProbeFields(_Strict):
    """One probe optimizer, as pipeline.optim.ProbeSpec."""

    label: str
    algorithm: str
    clip_fraction: Fraction = 0.0
    clip_target: ClipTarget = "grad"
    lr: PosFloat | None = 1.0
    hparams: dict[str, Any] = {}


class Measure(_Strict):
    """When and how an experiment measures; unset keys take the experiment's own defaults."""

    at: list[NonNegInt] | None = None
    every: PosInt | None = None
    landscape_offsets: list[StrictFloat] | None = None
    histogram_bins: PosInt | None = None
    histogram_lo: StrictFloat | None = None
    histogram_hi: StrictFloat | None = None
    robust_delta: PosFloat | None = None
    # "default" (or unset): the paper's twelve probes (pipeline.optim.DEFAULT_PROBES)
    probes: Annotated[list[ProbeFields] | None, BeforeValidator(lambda v: None if v == "default" else v)] = None
    curvature: StrictBool | None = None
    lanczos_iters: PosInt | None = None
    lanczos_tol: PosFloat | None = None
    hutchinson_samples: PosInt | None = None
    topk_fraction: Annotated[StrictFloat, Field(gt=0, le=1)] | None = None
    outlier_factor: PosFloat | None = None
    gn_samples: PosInt | None = None


class AlgorithmGrid(_Strict):
    lr: LrAxis  # null: Adafactor's relative step (adafactor only)
    clip_fraction: FractionAxis = [0.0]
    clip_target: TargetAxis = ["grad"]
    hparams: dict[str, Any] = {}


class ExperimentBlock(_Strict):
    experiment: str
    label: str | None = None  # prefixes trial ids: tells apart blocks that would repeat them
    workload: dict[str, Any]
    steps: PosInt
    seeds: SeedAxis = [0]
    measure: Measure = Measure()
    eval_every: PosInt | None = None
    algorithms: dict[str, AlgorithmGrid]


class SweepConfig(_Strict):
    name: str
    description: str | None = None
    results_dir: str = "results"  # a path; on a cluster, storage every node mounts at this path
    tracking_uri: str | None = None  # None: sqlite:///mlflow.db here; http://head:5000 on a cluster
    data_dir: str | None = None  # None: $PIPELINE_DATA_DIR or ~/.cache/adam-sgd-sharpness
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ray: RayConfig = RayConfig()
    resources_per_trial: Resources = Resources()
    experiments: list[ExperimentBlock]

    @property
    def sweep_dir(self) -> Path:
        return Path(self.results_dir).expanduser().absolute() / self.name


# Gauss-Newton smoothness needs a two-class sequence classifier (paper App. D: BERT on IMDB).
SMOOTHNESS_WORKLOADS = ("classification",)
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=-]*")


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> SweepConfig:
    """Read, override and validate a sweep config; raises ConfigError (one line) on bad input."""
    return validate(apply_overrides(read_config_file(Path(path)), overrides))


def validate(raw: dict) -> SweepConfig:
    """The schema (types, ranges, unknown keys) then the registries and the grid; ConfigError."""
    try:
        config = SweepConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None
    if not _SAFE_NAME.fullmatch(config.name):
        raise ConfigError(f"name: {config.name!r} must be a filesystem-safe word (letters, digits, _ . = -)")
    if config.device == "cuda" and config.resources_per_trial.gpu == 0:
        raise ConfigError("device: 'cuda' needs resources_per_trial.gpu > 0 (Ray hides GPUs from trials without one)")
    if not config.experiments:
        raise ConfigError("experiments: empty list, so the grid has no trials")
    seen: dict[str, int] = {}
    for index, block in enumerate(config.experiments):
        where = f"experiments.{index}"
        _check_block(where, block)
        try:
            trials = _block_trials(config, block)
        except ValueError as err:  # the workload's own spec checks (pipeline.workloads)
            raise ConfigError(f"{where}.{err}") from None
        for trial in trials:
            if trial["trial_id"] in seen:
                raise ConfigError(f"{where}: trial id {trial['trial_id']!r} repeats one of "
                                  f"experiments.{seen[trial['trial_id']]}; give one block a distinct `label`")
            seen[trial["trial_id"]] = index
    return config


def _describe(err: ValidationError) -> str:
    """The first error as `key.path: what was expected (got ...)`; unknown keys list the known."""
    first = err.errors()[0]
    loc = list(first["loc"])
    path = ".".join(str(p) for p in loc) or "config"
    if first["type"] == "extra_forbidden":
        return f"{path}: unknown key; allowed: {', '.join(_fields_at(loc[:-1]))}"
    if first["type"] == "missing":
        return f"{path}: required key is missing"
    return f"{path}: {first['msg']} (got {first['input']!r})"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for a in get_args(annotation) if (m := _model_in(a)) is not None), None)


def _fields_at(loc: Sequence[Any]) -> list[str]:
    """The keys allowed where an error points (list indexes and mapping keys keep the model)."""
    model: type[BaseModel] | None = SweepConfig
    for part in loc:
        if model is not None and isinstance(part, str) and part in model.model_fields:
            model = _model_in(model.model_fields[part].annotation)
    return list(model.model_fields) if model is not None else []


def _check_block(where: str, block: ExperimentBlock) -> None:
    if block.experiment not in EXPERIMENTS:
        raise ConfigError(f"{where}.experiment: unknown experiment {block.experiment!r}; allowed: {', '.join(EXPERIMENTS)}")
    if block.label is not None and not _SAFE_NAME.fullmatch(block.label):
        raise ConfigError(f"{where}.label: {block.label!r} must be a filesystem-safe word")
    name = block.workload.get("name")
    if name not in WORKLOADS:
        raise ConfigError(f"{where}.workload.name: unknown workload {name!r}; allowed: {', '.join(WORKLOADS)}")
    if block.experiment == "smoothness" and name not in SMOOTHNESS_WORKLOADS:
        raise ConfigError(f"{where}.workload.name: smoothness needs a two-class classifier: {', '.join(SMOOTHNESS_WORKLOADS)}")
    if block.measure.at is not None and block.measure.every is not None:
        raise ConfigError(f"{where}.measure: give `at` or `every`, not both")
    axes = {"seeds": block.seeds, "algorithms": block.algorithms}
    axes |= {f"algorithms.{a}.{axis}": getattr(g, axis) for a, g in block.algorithms.items()
             for axis in ("lr", "clip_fraction", "clip_target")}
    for key, values in axes.items():
        if not values:
            raise ConfigError(f"{where}.{key}: empty {'mapping' if isinstance(values, dict) else 'list'}, so the grid has no trials")
    optimizers = [(f"algorithms.{a}", a, _points(g), g.hparams) for a, g in block.algorithms.items()]
    optimizers += [(f"measure.probes.{i}", p.algorithm, [(p.lr, p.clip_fraction, p.clip_target)], p.hparams)
                   for i, p in enumerate(block.measure.probes or [])]
    for key, algorithm, points, hparams in optimizers:
        if algorithm not in ALGORITHMS:
            raise ConfigError(f"{where}.{key}: unknown algorithm {algorithm!r}; allowed: {', '.join(ALGORITHMS)}")
        if any(lr is None for lr, _, _ in points) and algorithm != "adafactor":
            raise ConfigError(f"{where}.{key}.lr: null (relative step) is allowed only for adafactor; expected a number > 0")
        for lr, fraction, target in points:
            try:  # the optimizer's own checks: hyper-parameter names, clip targets it supports
                make_rule(algorithm, lr=lr, clip_fraction=fraction, clip_target=target, **hparams)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"{where}.{key}: {str(err).splitlines()[0]}") from None


def _points(grid: AlgorithmGrid) -> list[tuple[float | None, float, str]]:
    """(lr, clip_fraction, clip_target) points; with no clipping the target means nothing: once."""
    points = []
    for target in grid.clip_target:
        for fraction in grid.clip_fraction:
            for lr in grid.lr:
                point = (lr, fraction, "grad" if fraction == 0 else target)
                if point not in points:
                    points.append(point)
    return points


def _workload(block: ExperimentBlock, config: SweepConfig) -> dict[str, Any]:
    spec = dict(block.workload)
    if config.data_dir is not None and spec.get("data_dir") is None:
        spec["data_dir"] = config.data_dir
    if spec.get("data_dir") is not None:  # trials run in other working directories
        spec["data_dir"] = str(Path(spec["data_dir"]).expanduser().absolute())
    return spec


def optimizer_label(algorithm: str, clip_fraction: float, clip_target: str) -> str:
    """Named like pipeline.optim's probe labels: sgd, sgd_clip0.1, adam_clipupdate0.5."""
    if clip_fraction == 0:
        return algorithm
    return f"{algorithm}_clip{'update' if clip_target == 'update' else ''}{clip_fraction:g}"


def trial_id(block: ExperimentBlock, algorithm: str, lr: float | None, fraction: float, target: str, seed: int) -> str:
    """Readable, unique and filesystem-safe: [label-]experiment-workload-optimizer-lr-seed."""
    parts = [block.label, block.experiment, block.workload["name"], optimizer_label(algorithm, fraction, target),
             "relstep" if lr is None else f"lr{lr:g}", f"seed{seed}"]
    return "-".join(p for p in parts if p)


def expand(config: SweepConfig) -> list[dict[str, Any]]:
    """The grid as trial dicts (docs/architecture.md), in config order."""
    return [trial for block in config.experiments for trial in _block_trials(config, block)]


def _block_trials(config: SweepConfig, block: ExperimentBlock) -> list[dict[str, Any]]:
    workload = validate_workload_spec(_workload(block, config))
    measure = block.measure.model_dump(exclude_none=True)
    return [
        {
            "sweep": config.name,
            "trial_id": trial_id(block, algorithm, lr, fraction, target, seed),
            "experiment": block.experiment,
            "workload": workload,
            "algorithm": algorithm,
            "clip_fraction": float(fraction),
            "clip_target": target,
            "lr": lr,
            "hparams": dict(grid.hparams),
            "seed": seed,
            "steps": block.steps,
            "device": config.device,
            "measure": measure,
            "eval_every": block.eval_every,
        }
        for algorithm, grid in block.algorithms.items()
        for lr, fraction, target in _points(grid)
        for seed in dict.fromkeys(block.seeds)  # a repeated seed is the same trial
    ]
