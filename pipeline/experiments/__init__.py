"""Experiments: plain functions `run(trial, report, checkpoints=None) -> Records`, each a hook into one
training loop (pipeline.experiments.loop), which checkpoints and resumes through `checkpoints`."""

from collections.abc import Callable

from pipeline.config import Trial
from pipeline.experiments import convergence, sharpness, smoothness
from pipeline.experiments.common import Records, Reporter
from pipeline.labels import EXPERIMENTS as NAMES

EXPERIMENTS: dict[str, Callable[..., Records]] = {
    "sharpness": sharpness.run,
    "convergence": convergence.run,
    "smoothness": smoothness.run,
}
assert tuple(EXPERIMENTS) == NAMES, "pipeline.labels.EXPERIMENT_TABLES names the same experiments"

__all__ = ["EXPERIMENTS", "Records", "Reporter", "Trial"]
