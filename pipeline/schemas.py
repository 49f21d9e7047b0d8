"""The pyarrow schema of every table, defined once: per-trial records and the aggregate stage's tables."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

STR, F64, I64, BOOL = pa.string(), pa.float64(), pa.int64(), pa.bool_()


@dataclass(frozen=True)
class TableSpec:
    """A table's name, schema, the key columns that fix its row order (determinism) and its
    identifying columns: those that name the setting (or trial) each row summarises."""

    name: str
    schema: pa.Schema
    sort_keys: tuple[str, ...]
    identity: tuple[str, ...] = ()

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)


def _fields(*specs: tuple) -> list[pa.Field]:
    # (name, type) or (name, type, True) for a nullable column; everything else is required.
    return [pa.field(s[0], s[1], nullable=len(s) > 2 and s[2]) for s in specs]


def _names(fields: list[pa.Field]) -> tuple[str, ...]:
    return tuple(f.name for f in fields)


# --- identity: every table starts with the columns that name what a row summarises --------------
# Three levels (README "The tables" says which table has which; tests/test_schemas.py checks it):
# setting    = pipeline.labels.SETTING_KEY: the optimizer a trial trains with, the block's label and
#              the optimizer's other hparams (canonical JSON, pipeline.labels.hparams_key);
# trajectory = a setting at one lr (null: Adafactor's relative step); seeds are its repeats;
# trial      = one trial: its id, its MLflow run id (null without a run), experiment and seed besides.
SETTING_IDENTITY = _fields(
    ("sweep", STR), ("label", STR, True), ("workload", STR), ("algorithm", STR), ("clip_fraction", F64),
    ("clip_target", STR), ("hparams", STR),
)
TRAJECTORY_IDENTITY = SETTING_IDENTITY + _fields(("lr", F64, True))
# On every trial record row (docs/architecture.md "Tables").
IDENTIFYING = _fields(
    ("trial_id", STR), ("sweep", STR), ("experiment", STR), ("label", STR, True), ("workload", STR),
    ("algorithm", STR), ("clip_fraction", F64), ("clip_target", STR), ("hparams", STR), ("lr", F64, True),
    ("seed", I64),
)
IDENTIFYING_COLUMNS: tuple[str, ...] = _names(IDENTIFYING)
# The trial's MLflow run: the `trials` record carries it, the aggregate stage joins it on by trial_id.
RUN_ID = pa.field("run_id", STR, nullable=True)
TRIAL_IDENTITY = IDENTIFYING[:1] + [RUN_ID] + IDENTIFYING[1:]
# Beside the identity on every trial row: the trial's outcome, "finished" or "diverged" (its
# training loss blew up: pipeline.experiments.loop; it has rows only from before that point).
STATUS = _fields(("status", STR))
TRIAL_COLUMNS: tuple[str, ...] = IDENTIFYING_COLUMNS + ("status",)
FINISHED, DIVERGED = "finished", "diverged"
IDENTITY_LEVELS: dict[str, tuple[str, ...]] = {
    "trial": _names(TRIAL_IDENTITY), "trajectory": _names(TRAJECTORY_IDENTITY), "setting": _names(SETTING_IDENTITY),
}
_SETTING_KEYS = ("workload", "label", "algorithm", "clip_fraction", "clip_target", "hparams")
_TRIAL_KEYS = _SETTING_KEYS + ("lr", "seed", "trial_id")

# The experiment's own columns, exactly as the experiments emit them.
_EXPERIMENT_COLUMNS: dict[str, list[pa.Field]] = {
    "sharpness": _fields(
        ("step", I64), ("probe", STR), ("probe_algorithm", STR), ("probe_clip_fraction", F64),
        ("probe_clip_target", STR), ("sharpness", F64), ("sharpness_raw", F64), ("robust", BOOL),
        # null when the sweep has no plain "sgd" probe to divide by
        ("ratio_to_sgd", F64, True), ("grad_correlation", F64), ("update_norm", F64),
        # the paper's Eq. 4 value where it was taken: this probe's raw value is negative, or SGD's is
        ("sharpness_shifted", F64, True),
        # the paper's ratio: raw / raw; shifted / shifted where SGD's raw value is negative
        ("ratio_to_sgd_paper", F64, True),
        # diagnostics: the clip threshold tau the probe used (null: it does not clip) and the share
        # of exactly-zero coordinates of the step's gradient (zeros pull a large-k tau down)
        ("clip_tau", F64, True), ("grad_zero_fraction", F64),
        # the measurement batch: split (train, as the paper; or test), examples, sub-batch size
        ("measure_batch", STR), ("measure_batch_size", I64), ("measure_sub_batch_size", I64),
    ),
    # The share of SGD's sharpness carried by its top-k coordinates (pipeline.measure.topk).
    "topk_share": _fields(
        ("step", I64), ("probe", STR), ("topk_fraction", F64), ("n_masked", I64), ("sharpness", F64),
        ("sharpness_masked", F64), ("sharpness_share", F64), ("norm_share", F64),
    ),
    "landscape": _fields(("step", I64), ("probe", STR), ("offset", F64), ("loss", F64), ("loss_change", F64)),
    # The per-probe step search along v/||v|| (paper Figs. 2-4): steps are distances s.
    "landscape_summary": _fields(
        ("step", I64), ("probe", STR), ("base_loss", F64), ("best_step", F64), ("best_loss", F64),
        ("best_reduction", F64), ("rise_step", F64, True), ("resolution", F64, True), ("bracketed", BOOL),
        ("evaluations", I64),
    ),
    # bin_lo / bin_hi: log10 of the edges (of |v_i|, or of |v_i| / max|v| with scale "relative");
    # the first and last rows of a probe are open-ended (-inf, lo) and (hi, inf): out of range.
    "histogram": _fields(("step", I64), ("probe", STR), ("scale", STR), ("bin_lo", F64), ("bin_hi", F64),
                         ("count", I64)),
    "convergence": _fields(("step", I64), ("train_loss", F64), ("test_loss", F64, True)),
    "curvature": _fields(
        ("step", I64), ("top_eigenvalue", F64), ("lanczos_iters", I64), ("lanczos_tol", F64),
        ("lanczos_converged", BOOL), ("hutchinson_samples", I64),
        # the Hutchinson diagonal's noise: ||stderr|| / ||estimate|| and the share of coordinates
        # whose estimate exceeds twice its standard error
        ("hutchinson_rel_stderr", F64, True), ("hutchinson_resolved", F64), ("rank_corr_all", F64),
        ("rank_corr_topk", F64), ("topk_fraction", F64),
    ),
    "smoothness": _fields(
        ("step", I64), ("L", F64), ("ell", F64), ("ratio", F64), ("fraction_removed", F64),
        # the control: as many coordinates removed at random (seeded by control_seed)
        ("ell_random", F64), ("ratio_random", F64),
        ("outlier_factor", F64), ("n_samples", I64),
        ("gn_params", STR), ("n_params", I64), ("control_seed", I64),
    ),
    # One row per completed trial: where it ran (Ray's node address), how long it took, for a
    # diverged trial the point and the training loss at which it stopped, and its tracking run (the
    # sink returns the run id when the trial starts).
    "trials": _fields(("node_ip", STR), ("hostname", STR), ("seconds", F64), ("diverged_step", I64, True),
                      ("diverged_loss", F64, True)) + [RUN_ID],
}
_EXPERIMENT_KEYS = {
    "sharpness": ("step", "probe"),
    "landscape": ("step", "probe", "offset"),
    "landscape_summary": ("step", "probe"),
    "histogram": ("step", "probe", "bin_lo"),
    "topk_share": ("step", "probe", "topk_fraction"),
    "convergence": ("step",),
    "curvature": ("step",),
    "smoothness": ("step",),
    "trials": (),
}

TRIAL_TABLES: dict[str, TableSpec] = {
    name: TableSpec(name, pa.schema(IDENTIFYING + STATUS + cols), _TRIAL_KEYS + _EXPERIMENT_KEYS[name],
                    IDENTIFYING_COLUMNS)
    for name, cols in _EXPERIMENT_COLUMNS.items()
}

# --- the aggregate stage's tables (<sweep_dir>/tables/<name>.parquet) ---------------------------


def derived_spec(name: str, level: str, columns: list[pa.Field], keys: tuple[str, ...] = (),
                 identity: list[pa.Field] | None = None) -> TableSpec:
    """An aggregate table: the identity columns of `level` ("trial", "trajectory", "setting") first,
    then its own; rows sort by the identity, then `keys`. Every aggregate table is built here, so a
    new one carries the full identity of what it summarises (pipeline.aggregate fills run_id)."""
    fields = identity if identity is not None else {"trial": TRIAL_IDENTITY, "trajectory": TRAJECTORY_IDENTITY,
                                                    "setting": SETTING_IDENTITY}[level]
    if _names(fields) != IDENTITY_LEVELS[level]:
        raise ValueError(f"table {name!r}: identity columns {_names(fields)} differ from the {level} level's")
    base = _TRIAL_KEYS if level == "trial" else _SETTING_KEYS + (("lr",) if level == "trajectory" else ())
    return TableSpec(name, pa.schema(fields + columns), base + keys, _names(fields))


# The per-trial records as aggregate tables: the trial identity (with run_id), then the experiment's columns.
TRIAL_OUTPUTS = {
    name: derived_spec(name, "trial", STATUS + [f for f in cols if f.name != "run_id"], _EXPERIMENT_KEYS[name])
    for name, cols in _EXPERIMENT_COLUMNS.items()
}

# Curvature beside directional sharpness: each curvature row joined with the sharpness rows of the
# same trial and step (one row per probe; probe null when that trial measured no sharpness).
CURVATURE_JOINED = derived_spec(
    "curvature", "trial",
    STATUS + _EXPERIMENT_COLUMNS["curvature"] + _fields(
        ("probe", STR, True), ("directional_sharpness", F64, True), ("sharpness_to_top_eigenvalue", F64, True)),
    ("step", "probe"),
)

CONVERGENCE_SUMMARY = derived_spec(
    "convergence_summary", "setting",
    _fields(
        ("baseline_label", STR, True),        # the label of the unclipped setting compared with
        ("best_lr", F64, True),               # null: Adafactor's relative step won
        # finished, diverged (every seed at best_lr) or partly_diverged; n_diverged of n_seeds
        ("status", STR), ("n_lrs", I64), ("n_seeds", I64), ("n_diverged", I64),
        ("final_window", I64), ("last_step", I64),
        ("best_lr_at_edge", BOOL, True),      # the best lr is its grid's smallest or largest: not bracketed
        # over the finished seeds; null when none finished; std null with one seed
        ("final_loss_mean", F64, True), ("final_loss_std", F64, True),
        ("final_test_loss_mean", F64, True),
        ("target_loss", F64, True),           # the unclipped baseline's final_loss_mean
        ("steps_to_target", I64, True), ("baseline_steps_to_target", I64, True),
        ("speedup", F64, True), ("loss_ratio", F64, True),
    ),
)

TABLE1_SHARPNESS_RATIO = derived_spec(
    "table1_sharpness_ratio", "trial",
    _fields(("trajectory", STR), ("step", I64), ("probe", STR),
            ("status", STR),  # the seed's trial: a diverged one is left out of ratio_mean and n_seeds
            ("ratio_to_sgd", F64, True),
            ("ratio_mean", F64, True), ("n_seeds", I64),
            ("ratio_to_sgd_paper", F64, True), ("ratio_paper_mean", F64, True),
            ("undecided", BOOL), ("n_undecided", I64)),
    ("step", "probe"),
)

# Paper Table 3: the clipped setting's identity (clip columns null on a row with no clipped run),
# beside the unclipped baseline (its label in baseline_label).
TABLE3_CONVERGENCE = derived_spec(
    "table3_convergence", "setting",
    _fields(
        ("baseline_label", STR, True),
        ("lr", F64, True), ("lr_at_edge", BOOL, True), ("final_loss_mean", F64, True), ("final_loss_std", F64, True),
        ("n_seeds", I64, True), ("n_diverged", I64, True),
        ("clip_lr", F64, True), ("clip_lr_at_edge", BOOL, True),
        ("clip_final_loss_mean", F64, True), ("clip_final_loss_std", F64, True),
        ("clip_n_seeds", I64, True), ("clip_n_diverged", I64, True),
        ("steps_to_target", I64, True), ("clip_steps_to_target", I64, True),
        ("speedup", F64, True), ("loss_ratio", F64, True),
    ),
    identity=[f.with_nullable(True) if f.name in ("clip_fraction", "clip_target") else f for f in SETTING_IDENTITY],
)

TABLE8_SMOOTHNESS = derived_spec(
    "table8_smoothness", "trajectory",
    _fields(("trajectory", STR), ("outlier_factor", F64), ("gn_params", STR), ("control_seed", I64), ("step", I64),
            ("n_seeds", I64),
            ("n_diverged", I64),  # seeds whose trial diverged: left out of the means and of n_seeds
            ("L", F64), ("ell", F64), ("ratio", F64), ("fraction_removed", F64),
            ("ell_random", F64), ("ratio_random", F64)),
    ("outlier_factor", "gn_params", "step"),
)

# The paper's orderings claims checked per workload (pipeline/orderings.py), per training trajectory.
ORDERINGS = derived_spec(
    "orderings", "trajectory",
    _fields(
        ("trajectory", STR), ("claim", STR), ("subject", STR), ("n_points", I64), ("n_undecided", I64),
        ("measured", F64, True), ("measured_log10", F64, True),
        ("control", F64, True),  # smoothness: median L / ell_random of the random-removal control
        ("fraction_holding", F64, True), ("holds", BOOL, True),
        # what the paper published for the same claim, probe, trajectory and workload
        ("paper_value", F64, True), ("paper_log10", F64, True), ("paper_points", I64),
        ("paper_fraction_holding", F64, True), ("paper", BOOL, True), ("paper_source", STR, True),
        ("agrees", BOOL, True), ("verdict", STR), ("detail", STR),
    ),
    ("claim", "subject"),
)

# Sec. 5's link: better local loss reduction along an algorithm's direction <-> faster convergence.
LOCAL_VS_CONVERGENCE = derived_spec(
    "local_vs_convergence", "trajectory",
    _fields(
        ("trajectory", STR), ("probe", STR),
        ("n_points", I64), ("best_reduction_mean", F64), ("reduction_rank", I64),
        ("convergence_lr", F64, True), ("final_loss_mean", F64, True), ("convergence_rank", I64, True),
        ("n_ranked", I64), ("rank_correlation", F64, True),
    ),
    ("probe",),
)

OUTPUT_TABLES: dict[str, TableSpec] = {
    **{name: spec for name, spec in TRIAL_OUTPUTS.items() if name != "curvature"},
    "curvature": CURVATURE_JOINED,
    "convergence_summary": CONVERGENCE_SUMMARY,
    "table1_sharpness_ratio": TABLE1_SHARPNESS_RATIO,
    "table3_convergence": TABLE3_CONVERGENCE,
    "table8_smoothness": TABLE8_SMOOTHNESS,
    "orderings": ORDERINGS,
    "local_vs_convergence": LOCAL_VS_CONVERGENCE,
}
