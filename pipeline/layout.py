"""Where a sweep's results live: the one place that builds paths under <results_dir>/<sweep name>/."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import atomic_write_text

DONE_MARK = "trial.json"  # written last, when a trial's records are complete
ERROR_FILE = "error.txt"  # the traceback of a failed trial
CHECKPOINT_FILE = "checkpoint.pt"  # the training state of an unfinished trial (deleted once it is done)


@dataclass(frozen=True)
class ResultsLayout:
    """The results of one sweep:

    trials/<trial_id>/records/<table>.parquet   per-trial records (the source of truth)
    trials/<trial_id>/trial.json                the done mark (the trial's settings)
    trials/<trial_id>/error.txt                 the traceback of a failed attempt
    trials/<trial_id>/checkpoint.pt             the last checkpoint of a trial not done yet (retries resume there)
    tables/<name>.parquet, figures/<stem>.png, report.md
    report.html                                 report.md as one self-contained page (figures inlined)
    report.png                                  a screenshot of report.html (pipeline.report_html)
    plan.json                                   the trial ids the sweep planned, each one's experiment
    config.yaml                                 the sweep's config, overrides applied (reruns it)
    ray/                                        Ray Tune's own state
    """

    sweep_dir: Path

    @classmethod
    def of(cls, results_dir: str | os.PathLike[str], name: str) -> ResultsLayout:
        return cls(Path(results_dir).expanduser().absolute() / name)

    @property
    def trials_dir(self) -> Path:
        return self.sweep_dir / "trials"

    def trial_dir(self, trial_id: str) -> Path:
        return self.trials_dir / trial_id

    def records_dir(self, trial_id: str) -> Path:
        return self.trial_dir(trial_id) / "records"

    def done_mark(self, trial_id: str) -> Path:
        return self.trial_dir(trial_id) / DONE_MARK

    def error_file(self, trial_id: str) -> Path:
        return self.trial_dir(trial_id) / ERROR_FILE

    def checkpoint_file(self, trial_id: str) -> Path:
        return self.trial_dir(trial_id) / CHECKPOINT_FILE

    def record_files(self) -> list[Path]:
        """Every trial's record files, in a fixed order."""
        return sorted(self.trials_dir.glob("*/records/*.parquet"))

    @property
    def tables_dir(self) -> Path:
        return self.sweep_dir / "tables"

    def table_path(self, name: str) -> Path:
        return self.tables_dir / f"{name}.parquet"

    @property
    def figures_dir(self) -> Path:
        return self.sweep_dir / "figures"

    @property
    def report_path(self) -> Path:
        return self.sweep_dir / "report.md"

    @property
    def report_html_path(self) -> Path:
        return self.sweep_dir / "report.html"

    @property
    def report_screenshot_path(self) -> Path:
        return self.sweep_dir / "report.png"

    @property
    def config_path(self) -> Path:
        return self.sweep_dir / "config.yaml"

    def write_config(self, text: str) -> None:
        atomic_write_text(self.config_path, text)

    @property
    def ray_dir(self) -> Path:
        return self.sweep_dir / "ray"

    @property
    def plan_path(self) -> Path:
        return self.sweep_dir / "plan.json"

    def write_plan(self, trial_ids: Sequence[str], experiments: Mapping[str, str] | None = None) -> None:
        data: dict[str, object] = {"trials": list(trial_ids)}
        if experiments is not None:
            data["experiments"] = {t: experiments[t] for t in trial_ids}
        atomic_write_text(self.plan_path, json.dumps(data, indent=1))

    def read_plan(self) -> list[str] | None:
        try:
            return list(json.loads(self.plan_path.read_text())["trials"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def read_plan_experiments(self) -> dict[str, str]:
        """Trial id -> experiment, from the plan ({} for a plan written before it named them)."""
        try:
            return {str(k): str(v) for k, v in json.loads(self.plan_path.read_text())["experiments"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}
