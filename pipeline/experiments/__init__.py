"""Experiments: plain functions `run(trial, report) -> Records` that run with or without Ray."""

from collections.abc import Callable

from pipeline.experiments import convergence, sharpness, smoothness
from pipeline.experiments.common import Records, Reporter

EXPERIMENTS: dict[str, Callable[[dict, Reporter], Records]] = {
    "sharpness": sharpness.run,
    "convergence": convergence.run,
    "smoothness": smoothness.run,
}

__all__ = ["EXPERIMENTS", "Records", "Reporter"]
