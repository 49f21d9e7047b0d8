"""Sweep configuration: the schema, YAML loading, dotted overrides, validation and the trial grid."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationError

from pipeline.config_yaml import ConfigError, apply_overrides, read_config_file
from pipeline.labels import (
    DEFAULT_PROBES, EXPERIMENTS, HISTOGRAM_RANGE, ClipTarget, Fraction, ProbeSpec, hparams_key, optimizer_label,
)
from pipeline.layout import ResultsLayout
from pipeline.workloads import WORKLOADS, validate_workload_spec


def _as_list(value: Any) -> Any:
    """A scalar where a grid axis is expected means a one-point axis (`lr: 0.1` == `lr: [0.1]`)."""
    return value if isinstance(value, list) else [value]


PosInt = Annotated[StrictInt, Field(gt=0)]
# Upper bound on a block's `steps`: the paper's longest runs are a few thousand steps; a bound
# turns a typo (steps=10**15) into an error instead of a run that never ends.
MAX_STEPS = 10_000_000
# Upper bounds on names that become folder names, MLflow experiment and run names: with the
# trial-id parts and temp-file suffixes they stay below the filesystem's 255-byte name limit.
MAX_NAME = 100
MAX_LABEL = 40
NonNegInt = Annotated[StrictInt, Field(ge=0)]
PosFloat = Annotated[StrictFloat, Field(gt=0)]
# Grid axes: a list, or a scalar for a one-point axis.
LrAxis = Annotated[list[PosFloat | None], BeforeValidator(_as_list)]
FractionAxis = Annotated[list[Fraction], BeforeValidator(_as_list)]
TargetAxis = Annotated[list[ClipTarget], BeforeValidator(_as_list)]
SeedAxis = Annotated[list[NonNegInt], BeforeValidator(_as_list)]
# A training loss above this multiple of the step-0 loss ends a trial as diverged (a non-finite
# loss always does): 10x the loss of the untrained model is far past any minibatch noise.
DIVERGENCE_FACTOR = 10.0
Factor = Annotated[StrictFloat | StrictInt, Field(gt=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RayConfig(_Strict):
    address: str | None = None  # None: start a local Ray; "auto": join the cluster this runs in
    num_cpus: PosInt | None = None  # local Ray only; None: every core
    max_concurrent_trials: PosInt | None = None  # None: as many as the resources allow
    connect_timeout_s: PosFloat = 10.0  # `address`: seconds to wait for the cluster before giving up


class Resources(_Strict):
    cpu: PosFloat = 1.0  # also the trial's torch thread count (rounded down, at least 1)
    gpu: Annotated[StrictFloat, Field(ge=0)] = 0.0  # a fraction shares one GPU between trials
    # Ray custom resources a trial needs, e.g. {worker_node: 1} to pin trials to the nodes that
    # were started with `ray start --resources '{"worker_node": N}'`.
    custom: dict[str, PosFloat] = {}


class Retry(_Strict):
    """Trial retries (Ray Tune's FailureConfig) and the checkpoints they resume from."""

    max_failures: NonNegInt = 2  # retries of a trial whose worker died or that raised; 0: none
    # Checkpoint after the update of every measurement point and every N steps (0: measurement
    # points only; null: never, so a retry starts the trial over).
    checkpoint_every: NonNegInt | None = 100


def _default_probes(value: Any) -> Any:
    return DEFAULT_PROBES if value in (None, "default") else value


class Measure(_Strict):
    """When and how an experiment measures; every default is here (experiments read no other)."""

    at: list[NonNegInt] | None = None  # measurement steps; with neither `at` nor `every`: 0 and the last
    every: PosInt | None = None
    # The measurement batch (paper App. B): `batch_size` examples drawn once per run from the
    # training split (the paper; it uses no held-out data) or the held-out `test` split; its loss is
    # the mean of the losses of its sub-batches of `sub_batch_size` examples (null: one sub-batch).
    batch: Literal["train", "test"] = "train"
    batch_size: PosInt = 1024  # the paper's; tiny configs set fewer
    sub_batch_size: PosInt | None = None  # must divide batch_size
    # Offsets s along v/||v|| (parameter-space distance) of the 1-D landscape; 0 is the reference loss.
    landscape_offsets: tuple[StrictFloat, ...] = (-0.2, -0.1, -0.05, 0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
    # The per-probe step search (paper Figs. 2-4): s = search_start * search_growth^k while the loss
    # falls, then search_refinements rounds of search_points steps inside the bracket.
    landscape_search: StrictBool = True
    search_start: PosFloat = 1e-3
    search_growth: Annotated[StrictFloat, Field(gt=1)] = 2.0
    search_max_steps: PosInt = 40
    search_refinements: NonNegInt = 3
    search_points: PosInt = 4
    # Update histogram (paper Fig. 1): `absolute` |v_i| on 30 log bins from 1e-15 to 10 (the
    # paper's), or `relative` |v_i| / max|v| (default range 1e-8 to 1). lo/hi: log10 of the range
    # ends, null for the scale's default.
    histogram_scale: Literal["absolute", "relative"] = "absolute"
    histogram_bins: PosInt = 30
    histogram_lo: StrictFloat | None = None
    histogram_hi: StrictFloat | None = None
    robust_delta: PosFloat = 0.01  # the shift of the robust sharpness, x + delta v/||v||
    # "default" (or unset): the paper's twelve probes (pipeline.labels.DEFAULT_PROBES)
    probes: Annotated[tuple[ProbeSpec, ...], BeforeValidator(_default_probes)] = DEFAULT_PROBES
    curvature: StrictBool = False  # top Hessian eigenvalue and |g| vs |H_ii| rank correlation
    lanczos_iters: PosInt = 20
    lanczos_tol: PosFloat = 1e-3
    # Rademacher samples of the Hutchinson diagonal: at 8 the estimate is mostly off-diagonal noise
    # (docs/science.md, 'Beyond the paper: curvature', has the measurement behind this default).
    hutchinson_samples: Annotated[StrictInt, Field(ge=2)] = 256
    topk_fraction: Annotated[StrictFloat, Field(gt=0, le=1)] = 0.1
    # The share of SGD's sharpness carried by its top-k coordinates (paper Secs. 3.2, 4.1), per k;
    # empty: not measured. Written to the topk_share table at every measurement point.
    share_fractions: tuple[Annotated[StrictFloat, Field(gt=0, le=1)], ...] = (0.001, 0.01, 0.1)
    outlier_factor: PosFloat = 4.0  # Gauss-Newton: rows >= factor x the mean row norm are removed
    gn_samples: PosInt = 16
    # Gauss-Newton coordinates: "attention" (the attention weight matrices, as the authors' code),
    # "all" (every trainable parameter) or a regular expression searched in parameter names.
    gn_params: Annotated[str, Field(min_length=1)] = "attention"
    gn_control_seed: NonNegInt = 0  # seeds the random-removal control (the authors' check_sol)

    def steps(self, steps: int) -> list[int]:
        """The steps at which an experiment measures: `at`, or every N, within [0, steps]."""
        if self.at is not None:
            return sorted({s for s in self.at if 0 <= s <= steps})
        return list(range(0, steps + 1, self.every or max(steps, 1)))


class AlgorithmGrid(_Strict):
    lr: LrAxis  # null: Adafactor's relative step (adafactor only)
    clip_fraction: FractionAxis = [0.0]
    clip_target: TargetAxis = ["grad"]
    hparams: dict[str, Any] = {}


class ExperimentBlock(_Strict):
    experiment: str
    label: str | None = None  # prefixes trial ids: tells apart blocks that would repeat them
    workload: dict[str, Any]
    steps: Annotated[StrictInt, Field(gt=0, le=MAX_STEPS)]
    seeds: SeedAxis = [0]
    measure: Measure = Measure()
    eval_every: PosInt | None = None
    divergence_factor: Factor | None = DIVERGENCE_FACTOR  # None: only a non-finite loss diverges
    algorithms: dict[str, AlgorithmGrid]


class Trial(_Strict):
    """One point of the sweep grid: everything a trial needs, typed once (docs/architecture.md)."""

    sweep: str
    trial_id: str
    experiment: str
    label: str | None = None  # the block's label, when it has one
    workload: dict[str, Any]  # the validated spec, defaults filled in
    algorithm: str  # the training optimizer (the trajectory, for sharpness)
    clip_fraction: float = 0.0
    clip_target: ClipTarget = "grad"
    lr: float | None  # None: Adafactor's relative step
    hparams: dict[str, Any] = {}  # passed to make_optimizer
    seed: int = 0
    steps: int
    device: str = "auto"
    measure: Measure = Measure()
    eval_every: int | None = None  # convergence: test-batch loss every N steps
    divergence_factor: float | None = DIVERGENCE_FACTOR  # see pipeline.experiments.loop

    @property
    def trajectory(self) -> str:
        return optimizer_label(self.algorithm, self.clip_fraction, self.clip_target)

    @property
    def workload_name(self) -> str:
        return self.workload["name"]

    def identity(self) -> dict[str, Any]:
        """The identifying columns of every row this trial writes (pipeline.schemas.IDENTIFYING)."""
        return {"trial_id": self.trial_id, "sweep": self.sweep, "experiment": self.experiment,
                "label": self.label, "workload": self.workload_name, "algorithm": self.algorithm,
                "clip_fraction": self.clip_fraction, "clip_target": self.clip_target,
                "hparams": hparams_key(self.hparams), "lr": self.lr, "seed": self.seed}

    def to_json(self) -> dict[str, Any]:
        """The trial as JSON data (the done mark holds it); Trial.model_validate reads it back."""
        return self.model_dump(mode="json")

    def params(self) -> dict[str, Any]:
        """The settings as tracking params: the probes as their labels."""
        data = self.to_json()
        data["measure"]["probes"] = [p["label"] for p in data["measure"]["probes"]]
        return data


class SweepConfig(_Strict):
    name: str
    description: str | None = None
    results_dir: str = "results"  # a path; on a cluster, storage every node mounts at this path
    tracking_uri: str | None = None  # None: sqlite:///mlflow.db here; http://head:5000 on a cluster
    data_dir: str | None = None  # None: $PIPELINE_DATA_DIR or ~/.cache/adam-sgd-sharpness
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ray: RayConfig = RayConfig()
    resources_per_trial: Resources = Resources()
    retry: Retry = Retry()
    experiments: list[ExperimentBlock]

    @property
    def layout(self) -> ResultsLayout:
        return ResultsLayout.of(self.results_dir, self.name)

    def to_yaml(self) -> str:
        """The config as YAML that validates back to the same trials: settings that differ from the
        defaults, with results_dir absolute (the sweep directory's report shows it and reruns it)."""
        import yaml

        data = self.model_dump(mode="json", exclude_defaults=True)
        data["results_dir"] = str(self.layout.sweep_dir.parent)
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)

    @cached_property
    def trials(self) -> tuple[Trial, ...]:
        """The grid, expanded once (validate() fills this), in config order."""
        return tuple(trial for block in self.experiments for trial in block_trials(self, block))


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
    if len(config.name) > MAX_NAME:
        raise ConfigError(f"name: {len(config.name)} characters; expected at most {MAX_NAME} "
                          "(it names the results folder and the MLflow experiment)")
    if config.device == "cuda" and config.resources_per_trial.gpu == 0:
        raise ConfigError("device: 'cuda' needs resources_per_trial.gpu > 0 (Ray hides GPUs from trials without one)")
    if not config.experiments:
        raise ConfigError("experiments: empty list, so the grid has no trials")
    seen: dict[str, int] = {}
    trials: list[Trial] = []
    for index, block in enumerate(config.experiments):
        where = f"experiments.{index}"
        _check_block(where, block)
        try:
            expanded = block_trials(config, block)
        except ValueError as err:  # the workload's own spec checks (pipeline.workloads)
            raise ConfigError(f"{where}.{err}") from None
        for trial in expanded:
            if trial.trial_id in seen:
                raise ConfigError(f"{where}: trial id {trial.trial_id!r} repeats one of "
                                  f"experiments.{seen[trial.trial_id]}; give one block a distinct `label`")
            seen[trial.trial_id] = index
        trials += expanded
    config.__dict__["trials"] = tuple(trials)  # the cached_property: the grid is expanded once
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
        raise ConfigError(f"{where}.experiment: unknown experiment {block.experiment!r}; "
                          f"allowed: {', '.join(EXPERIMENTS)}")
    if block.label is not None and not _SAFE_NAME.fullmatch(block.label):
        raise ConfigError(f"{where}.label: {block.label!r} must be a filesystem-safe word")
    if block.label is not None and len(block.label) > MAX_LABEL:
        raise ConfigError(f"{where}.label: {len(block.label)} characters; expected at most {MAX_LABEL} "
                          "(it prefixes every trial id, a folder name)")
    name = block.workload.get("name")
    if name not in WORKLOADS:
        raise ConfigError(f"{where}.workload.name: unknown workload {name!r}; allowed: {', '.join(WORKLOADS)}")
    if block.experiment == "smoothness" and not WORKLOADS[name].supports_smoothness:
        # Gauss-Newton smoothness needs a two-class classifier (paper App. D: BERT on IMDB).
        allowed = ", ".join(n for n, d in WORKLOADS.items() if d.supports_smoothness)
        raise ConfigError(f"{where}.workload.name: smoothness needs a two-class classifier: {allowed}")
    if block.measure.at is not None and block.measure.every is not None:
        raise ConfigError(f"{where}.measure: give `at` or `every`, not both")
    beyond = sorted(s for s in block.measure.at or () if s > block.steps)
    if beyond:  # they would be dropped silently, leaving no measurement rows for them
        raise ConfigError(f"{where}.measure.at: step(s) {beyond} beyond the run's steps ({block.steps}); "
                          f"expected steps in [0, {block.steps}]")
    if block.measure.every is not None and block.measure.every > block.steps:
        raise ConfigError(f"{where}.measure.every: {block.measure.every} exceeds the run's steps "
                          f"({block.steps}); expected at most {block.steps}")
    if block.measure.gn_params not in ("attention", "all"):
        try:
            re.compile(block.measure.gn_params)
        except re.error as err:
            raise ConfigError(f"{where}.measure.gn_params: expected attention, all or a regular expression; "
                              f"{block.measure.gn_params!r} is not one ({err})") from None
    measure = block.measure
    if measure.sub_batch_size is not None and measure.batch_size % measure.sub_batch_size:
        raise ConfigError(f"{where}.measure.sub_batch_size: {measure.sub_batch_size} must divide "
                          f"measure.batch_size ({measure.batch_size}): sub-batches are averaged with equal weight")
    lo, hi = (d if v is None else v for v, d in zip((measure.histogram_lo, measure.histogram_hi),
                                                    HISTOGRAM_RANGE[measure.histogram_scale]))
    if lo >= hi:
        raise ConfigError(f"{where}.measure.histogram_lo: {lo} must be below histogram_hi ({hi})")
    axes = {"seeds": block.seeds, "algorithms": block.algorithms}
    axes |= {f"algorithms.{a}.{axis}": getattr(g, axis) for a, g in block.algorithms.items()
             for axis in ("lr", "clip_fraction", "clip_target")}
    for key, values in axes.items():
        if not values:
            kind = "mapping" if isinstance(values, dict) else "list"
            raise ConfigError(f"{where}.{key}: empty {kind}, so the grid has no trials")
    optimizers = [(f"algorithms.{a}", a, _points(g), g.hparams) for a, g in block.algorithms.items()]
    optimizers += [(f"measure.probes.{i}", p.algorithm, [(p.lr, p.clip_fraction, p.clip_target)], p.hparams)
                   for i, p in enumerate(block.measure.probes)]
    labels = [p.label for p in block.measure.probes]
    if len(set(labels)) < len(labels):
        raise ConfigError(f"{where}.measure.probes: labels must be unique; repeated: "
                          f"{sorted({x for x in labels if labels.count(x) > 1})}")
    from pipeline.optim import ALGORITHMS, make_rule  # torch: only when a config is validated

    for key, algorithm, points, hparams in optimizers:
        if algorithm not in ALGORITHMS:
            raise ConfigError(f"{where}.{key}: unknown algorithm {algorithm!r}; allowed: {', '.join(ALGORITHMS)}")
        if any(lr is None for lr, _, _ in points) and algorithm != "adafactor":
            raise ConfigError(f"{where}.{key}.lr: null (relative step) is allowed only for adafactor; "
                              "expected a number > 0")
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


def block_workload(block: ExperimentBlock, config: SweepConfig) -> dict[str, Any]:
    """A block's workload spec as written, with the sweep's data_dir (absolute) filled in."""
    spec = dict(block.workload)
    if config.data_dir is not None and spec.get("data_dir") is None:
        spec["data_dir"] = config.data_dir
    if spec.get("data_dir") is not None:  # trials run in other working directories
        spec["data_dir"] = str(Path(spec["data_dir"]).expanduser().absolute())
    return spec


def trial_id(block: ExperimentBlock, algorithm: str, lr: float | None, fraction: float, target: str, seed: int) -> str:
    """Readable, unique and filesystem-safe: [label-]experiment-workload-optimizer-lr-seed."""
    parts = [block.label, block.experiment, block.workload["name"], optimizer_label(algorithm, fraction, target),
             "relstep" if lr is None else f"lr{lr:g}", f"seed{seed}"]
    return "-".join(p for p in parts if p)


def block_trials(config: SweepConfig, block: ExperimentBlock) -> list[Trial]:
    """One block's trials, in grid order."""
    workload = validate_workload_spec(block_workload(block, config))
    return [
        Trial(
            sweep=config.name, trial_id=trial_id(block, algorithm, lr, fraction, target, seed),
            experiment=block.experiment, label=block.label, workload=workload, algorithm=algorithm,
            clip_fraction=float(fraction), clip_target=target, lr=lr, hparams=dict(grid.hparams), seed=seed,
            steps=block.steps, device=config.device, measure=block.measure, eval_every=block.eval_every,
            divergence_factor=None if block.divergence_factor is None else float(block.divergence_factor),
        )
        for algorithm, grid in block.algorithms.items()
        for lr, fraction, target in _points(grid)
        for seed in dict.fromkeys(block.seeds)  # a repeated seed is the same trial
    ]
