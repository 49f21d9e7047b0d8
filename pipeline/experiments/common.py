"""What the experiments share: seeding, the device, the reporter, schedules and the training step."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

import torch

from pipeline.optim import make_optimizer

Records = dict[str, list[dict[str, Any]]]
# A reporter is `report(step, metrics)`, or a list that collects {"step": step, **metrics} rows.
Reporter = Union[Callable[[int, dict[str, float]], None], list]


def emit(report: Reporter, step: int, metrics: Mapping[str, float]) -> None:
    """Sends one step's metrics to the reporter, whichever form it has."""
    if isinstance(report, list):
        report.append({"step": step, **metrics})
    else:
        report(step, dict(metrics))


def seed_everything(seed: int) -> torch.Generator:
    """Seeds Python and torch; returns a generator for the experiment's own random draws."""
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str | None) -> torch.device:
    """'auto' picks the GPU when there is one; anything else is taken as a torch device name."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def measurement_steps(measure: Mapping[str, Any], steps: int) -> list[int]:
    """The steps at which an experiment measures: `at` (a list) or `every` N, within [0, steps]."""
    if measure.get("at") is not None:
        return sorted({int(s) for s in measure["at"] if 0 <= int(s) <= steps})
    every = int(measure.get("every") or max(steps, 1))
    return list(range(0, steps + 1, every))


def training_optimizer(model: torch.nn.Module, trial: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The trial's training optimizer over the model's trainable parameters."""
    return make_optimizer(
        [p for p in model.parameters() if p.requires_grad],
        trial["algorithm"],
        lr=trial.get("lr"),
        clip_fraction=float(trial.get("clip_fraction", 0.0)),
        clip_target=trial.get("clip_target", "grad"),
        **dict(trial.get("hparams") or {}),
    )


def named_trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's trainable parameters by name, as the (live) tensors themselves."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def is_finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))


def subset(batch: Mapping[str, torch.Tensor], keys: Iterable[str]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in keys if k in batch}
