"""What the experiments share: the reporter, seeding and the device, the training optimizer."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

import torch

from pipeline.config import Trial
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


def set_phase(report: Reporter, phase: str, step: int) -> None:
    """Tells a live reporter what the trial does now ("measuring", "training"), for the progress lines;
    a reporter without a `phase` attribute (a list, a plain function) ignores it."""
    tell = getattr(report, "phase", None)
    if tell is not None:
        tell(phase, step)


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


def training_optimizer(params: Iterable[torch.Tensor], trial: Trial) -> torch.optim.Optimizer:
    """The trial's training optimizer over these (trainable) parameters."""
    return make_optimizer(list(params), trial.algorithm, lr=trial.lr, clip_fraction=trial.clip_fraction,
                          clip_target=trial.clip_target, **trial.hparams)


def named_trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's trainable parameters by name, as the (live) tensors themselves."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}
