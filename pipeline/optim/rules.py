"""The algorithm registry: names -> rule classes, and `make_rule` with its input checks."""

from __future__ import annotations

from typing import Any

from pipeline.optim.adafactor import Adafactor
from pipeline.optim.adam import Adam
from pipeline.optim.base import Rule
from pipeline.optim.lion import Lion
from pipeline.optim.normalized_sgd import NormalizedSGD
from pipeline.optim.sgd import SGDMomentum
from pipeline.optim.sign_sgd import SignSGD

ALGORITHMS = ("sgd", "normalized_sgd", "sign_sgd", "adam", "adafactor", "lion")

RULES: dict[str, type[Rule]] = {
    "sgd": SGDMomentum,
    "normalized_sgd": NormalizedSGD,
    "sign_sgd": SignSGD,
    "adam": Adam,
    "adafactor": Adafactor,
    "lion": Lion,
}


def make_rule(algorithm: str, *, lr: float | None, clip_fraction: float = 0.0,
              clip_target: str = "grad", **hparams: Any) -> Rule:
    """The rule for `algorithm` (one of ALGORITHMS); ValueError on any bad argument.

    `lr=None` is Adafactor's relative step (other algorithms need a positive lr). `hparams` are
    the algorithm's own settings (docs/architecture.md: momentum, betas, eps, beta1, decay_rate,
    clip_threshold, relative_step, scale_parameter, weight_decay).
    """
    if algorithm not in RULES:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}; got {algorithm!r}")
    cls = RULES[algorithm]
    unknown = sorted(set(hparams) - set(cls.hparam_names()))
    if unknown:
        raise ValueError(f"unknown hparams {unknown} for {algorithm}; allowed: {list(cls.hparam_names())}")
    if "betas" in hparams and isinstance(hparams["betas"], list):
        hparams["betas"] = tuple(hparams["betas"])  # configs from YAML give lists
    if "eps" in hparams and isinstance(hparams["eps"], list):
        hparams["eps"] = tuple(hparams["eps"])
    return cls(lr=lr, clip_fraction=clip_fraction, clip_target=clip_target, **hparams)
