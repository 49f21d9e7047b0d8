"""What became of a sweep's planned trials (finished, diverged, failed, missing), overall and per aggregate table."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pyarrow.parquet as pq

from pipeline.labels import EXPERIMENT_TABLES, EXPERIMENTS
from pipeline.layout import ResultsLayout
from pipeline.schemas import DIVERGED, FINISHED

FAILED, MISSING = "failed", "missing"
STATES = (FINISHED, DIVERGED, FAILED, MISSING)

# The experiments whose trials feed each aggregate table.
TABLE_EXPERIMENTS: dict[str, tuple[str, ...]] = {
    **{table: (experiment,) for experiment, tables in EXPERIMENT_TABLES.items() for table in tables},
    "curvature": ("sharpness",),
    "table1_sharpness_ratio": ("sharpness",),
    "convergence_summary": ("convergence",),
    "table3_convergence": ("convergence",),
    "table8_smoothness": ("smoothness",),
    "orderings": ("sharpness", "smoothness"),
    "trials": EXPERIMENTS,
}
# What a table does with a diverged trial's rows (those from before it diverged); the report says so.
DIVERGED_ROWS: dict[str, str] = {
    **{table: "kept, status diverged" for table in TABLE_EXPERIMENTS},
    "table1_sharpness_ratio": "kept, status diverged; left out of the seed mean",
    "table8_smoothness": "left out (n_diverged)",
    "convergence_summary": "no final loss; its lr ranked last (n_diverged)",
    "table3_convergence": "no final loss; its lr ranked last (n_diverged)",
    "orderings": "left out (said in detail)",
}


@dataclass(frozen=True)
class TrialStates:
    """Every planned trial's experiment and state; where diverged, the step it stopped at."""

    experiment: dict[str, str]  # trial id -> experiment
    state: dict[str, str]  # trial id -> one of STATES
    diverged_step: dict[str, int | None]

    def ids(self, *states: str) -> list[str]:
        return sorted(t for t, s in self.state.items() if s in states)

    @property
    def done(self) -> list[str]:
        """The trials whose records count: a done mark, finished or diverged (never a failed one)."""
        return self.ids(FINISHED, DIVERGED)

    def counts(self, experiments: Iterable[str] = EXPERIMENTS) -> dict[str, int]:
        wanted = set(experiments)
        states = [s for t, s in self.state.items() if self.experiment[t] in wanted]
        return {"planned": len(states), **{s: states.count(s) for s in STATES}}

    def per_table(self, names: Iterable[str]) -> dict[str, dict[str, int]]:
        return {name: self.counts(TABLE_EXPERIMENTS.get(name, EXPERIMENTS)) for name in names}

    def unbuilt(self, built: Iterable[str]) -> list[str]:
        """The record tables of planned experiments that have no table (none of their trials has records)."""
        planned = set(self.experiment.values())
        return [t for e, tables in EXPERIMENT_TABLES.items() if e in planned for t in tables if t not in set(built)]


def _experiment_of(trial_id: str, layout: ResultsLayout, plan: Mapping[str, str]) -> str:
    if trial_id in plan:
        return plan[trial_id]
    try:
        return str(json.loads(layout.done_mark(trial_id).read_text())["experiment"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    # An older plan without experiments: ids read [label-]experiment-workload-...
    return next((part for part in trial_id.split("-") if part in EXPERIMENTS), "unknown")


def _outcome(layout: ResultsLayout, trial_id: str) -> tuple[str, int | None]:
    """(finished or diverged, step) from a done trial's `trials` record; records from before the
    status column are finished."""
    path = layout.records_dir(trial_id) / "trials.parquet"
    try:
        rows = pq.read_table(path).to_pylist()
    except (OSError, ValueError):
        return FINISHED, None
    row = rows[0] if rows else {}
    return str(row.get("status") or FINISHED), row.get("diverged_step")


def trial_states(layout: ResultsLayout) -> TrialStates:
    """The plan (plan.json; without one, the trials the directory holds) and each trial's state:
    a done mark -> finished or diverged; an error file and no done mark -> failed; else missing."""
    plan_ids = layout.read_plan()
    plan_experiments = layout.read_plan_experiments()
    on_disk = sorted(p.name for p in layout.trials_dir.iterdir() if p.is_dir()) if layout.trials_dir.is_dir() else []
    done_on_disk = [t for t in on_disk if layout.done_mark(t).is_file()]
    ids = list(dict.fromkeys([*(plan_ids if plan_ids is not None else on_disk), *done_on_disk]))
    experiment, state, diverged_step = {}, {}, {}
    for trial_id in ids:
        experiment[trial_id] = _experiment_of(trial_id, layout, plan_experiments)
        if layout.done_mark(trial_id).is_file():
            state[trial_id], step = _outcome(layout, trial_id)
            if state[trial_id] == DIVERGED:
                diverged_step[trial_id] = step
        elif layout.error_file(trial_id).is_file():
            state[trial_id] = FAILED
        else:
            state[trial_id] = MISSING
    return TrialStates(experiment, state, diverged_step)


def summary_line(counts: Mapping[str, int]) -> str:
    """"8 planned: 6 finished, 1 diverged, 1 failed, 0 missing"."""
    return f"{counts['planned']} planned: " + ", ".join(f"{counts[s]} {s}" for s in STATES)


def _listed(ids: list[str], limit: int = 5) -> str:
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def accounting_lines(states: TrialStates, tables: Iterable[str]) -> list[str]:
    """What `python -m pipeline aggregate` prints: the whole sweep, each table, the trials not counted."""
    lines = [f"trials: {summary_line(states.counts())}; tables are built from the finished and diverged "
             "trials' records only"]
    tables = list(tables)
    for name, counts in states.per_table(sorted(tables)).items():
        lines.append(f"  {name}: {summary_line(counts)}")
    for name, counts in states.per_table(states.unbuilt(tables)).items():
        lines.append(f"  {name}: {summary_line(counts)} (not built: no records)")
    for state in (DIVERGED, FAILED, MISSING):
        ids = states.ids(state)
        if ids:
            lines.append(f"{state}: {_listed(ids)}")
    return lines


def accounting_rows(states: TrialStates, tables: Iterable[str]) -> list[list[object]]:
    """The report's accounting table: per aggregate table, its trials in each state and what it does
    with a diverged trial's rows."""
    tables = list(tables)
    built = [[f"`{name}`", counts["planned"], *(counts[s] for s in STATES), DIVERGED_ROWS.get(name, "-")]
             for name, counts in states.per_table(tables).items()]
    return built + [[f"`{name}` (not built: no records)", counts["planned"], *(counts[s] for s in STATES), "-"]
                    for name, counts in states.per_table(states.unbuilt(tables)).items()]


def _seeds(n: object, diverged: object) -> str:
    return f"{n} seed{'s' if n != 1 else ''}" + (f" ({diverged} diverged)" if diverged else "")


def table3_notes(rows: Iterable[Mapping[str, object]]) -> list[str]:
    """One line per comparison of paper Table 3's layout whose two sides had different seeds, or a
    diverged seed: the report prints them under the comparison."""
    notes = []
    for r in rows:
        if r["clip_fraction"] is None or r["n_seeds"] is None:
            continue
        unequal = r["n_seeds"] != r["clip_n_seeds"]
        if unequal or r["n_diverged"] or r["clip_n_diverged"]:
            what = "seeds differ" if unequal else "diverged seeds"
            notes.append(f"{what}: {r['algorithm']} unclipped {_seeds(r['n_seeds'], r['n_diverged'])} vs "
                         f"clipped ({r['clip_fraction']:g}, {r['clip_target']}) "
                         f"{_seeds(r['clip_n_seeds'], r['clip_n_diverged'])}")
    return notes


def seed_counts_note(counts: Mapping[str, object]) -> str | None:
    """"seeds differ: a 2, b 1" where the compared columns (label -> seeds) do not have the same seeds."""
    if len(set(counts.values())) <= 1:
        return None
    return "seeds differ between the compared columns: " + ", ".join(f"{k} {v}" for k, v in counts.items())
