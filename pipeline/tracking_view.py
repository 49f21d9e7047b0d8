"""What a person sees of a sweep in the MLflow UI: run names, tags, the experiment's saved view, report artifacts.

Pure functions of the trial (names, tags) and of the store's layout (which report files to upload); the
MLflow calls stay in pipeline.tracking. The saved view uses the UI's "share view" mechanism of the
installed MLflow (3.x): an experiment tag `mlflow.sharedViewState.<key>` holding the view as JSON, opened
by `#/experiments/<id>/runs?viewStateShareKey=<key>`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import Trial
    from pipeline.layout import ResultsLayout

# The UI opens an experiment on its GenAI/traces page unless the experiment says what kind it is.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
VIEW_KEY = "trials"  # the saved view's share key
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
# Columns of the saved view: the settings that tell trials apart, then the curves' last values.
VIEW_TAGS = ("trajectory", "lr", "seed", "experiment", "label", "workload")  # trajectory: algorithm and clip
RUN_NAME_COLUMN = "attributes.`Run Name`"  # the UI's id of that column
VIEW_METRICS = ("train_loss", "test_loss")


def run_name(trial: Trial) -> str:
    """What differs first: trajectory (algorithm + clip), lr, seed, hparams; then label or experiment and
    workload. The full trial id is the `trial_id` tag."""
    lr = "relstep" if trial.lr is None else f"lr{trial.lr:g}"
    hparams = [f"{key}={value}" for key, value in sorted(trial.hparams.items())]
    where = [trial.label] if trial.label else []
    return " ".join([trial.trajectory, lr, f"s{trial.seed}", *hparams, *where, trial.experiment[:5],
                     trial.workload_name])


def trial_tags(trial: Trial) -> dict[str, str]:
    """Every setting as a run tag, so that the UI's "Group by" and search work on each: the identity
    (pipeline.schemas.IDENTIFYING), the trajectory, the block label, each hparam (`hparams.<name>`, and
    `hparams` with all of them), the workload's size and the number of steps."""
    # `hparams` as the tables' column has it (pipeline.labels.hparams_key), so a row finds its runs.
    tags = {**trial.identity(), "trajectory": trial.trajectory, "label": trial.label or "-", "steps": trial.steps,
            "workload_size": trial.workload.get("size", "-")}
    tags |= {f"hparams.{key}": value for key, value in trial.hparams.items()}
    return {k: "relative_step" if v is None and k == "lr" else str(v) for k, v in tags.items()}


def saved_view() -> str:
    """The saved runs view: only the trials (not the parent, so that they are not collapsed under it),
    the settings and loss columns shown, every run drawn in the charts."""
    columns = [f"metrics.`{m}`" for m in VIEW_METRICS] + [f"tags.`{t}`" for t in VIEW_TAGS]
    # The UI applies saved widths to the columns named in columnOrder: the names' default 190 px cut them.
    return json.dumps({
        "searchFilter": "tags.trial_id != ''",
        "orderByKey": "tags.`mlflow.runName`", "orderByAsc": True,  # the UI's key of the Run Name column
        "selectedColumns": columns,
        "columnOrder": [RUN_NAME_COLUMN, *columns],
        "columnWidths": {RUN_NAME_COLUMN: 300, "tags.`trajectory`": 130, "tags.`lr`": 80, "tags.`seed`": 60,
                         "tags.`label`": 80},
        "runsHiddenMode": "SHOW_ALL",
    })


def experiment_tags() -> dict[str, str]:
    """Tags set on the sweep's experiment: its kind (the UI opens on the runs) and the saved view."""
    return {EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1], VIEW_TAG: saved_view()}


def view_path(experiment_id: str) -> str:
    """The UI route of the saved view (after the server's address)."""
    return f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"


def report_artifacts(layout: ResultsLayout) -> list[tuple[Path, str]]:
    """The report files that exist in the layout, as (path, artifact folder): report.* at the top, the
    tables and the figures in folders of those names."""
    found = [(path, "") for path in sorted(layout.sweep_dir.glob("report.*")) if path.is_file()]
    for folder in (layout.tables_dir, layout.figures_dir):
        if folder.is_dir():
            found += [(path, folder.name) for path in sorted(folder.iterdir()) if path.is_file()]
    return found
