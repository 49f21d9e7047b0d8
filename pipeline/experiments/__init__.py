"""Experiments: plain functions `run(trial, report) -> Records`, each a hook into one training loop."""

from collections.abc import Callable

from pipeline.config import Trial
from pipeline.experiments import convergence, sharpness, smoothness
from pipeline.experiments.common import Records, Reporter
from pipeline.labels import EXPERIMENTS as NAMES

EXPERIMENTS: dict[str, Callable[[Trial, Reporter], Records]] = {
    "sharpness": sharpness.run,
    "convergence": convergence.run,
    "smoothness": smoothness.run,
}
assert tuple(EXPERIMENTS) == NAMES, "pipeline.labels.EXPERIMENT_TABLES names the same experiments"

__all__ = ["EXPERIMENTS", "Records", "Reporter", "Trial"]
