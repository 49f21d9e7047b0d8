"""The optimizers, one pure rule per algorithm, serving both training and the probe bank."""

from pipeline.optim.adapter import RuleOptimizer, make_optimizer
from pipeline.optim.base import CLIP_TARGETS, Rule, State, copy_state
from pipeline.optim.clip import clip_count, clip_threshold, clip_with_threshold, coordinate_clip
from pipeline.optim.probes import DEFAULT_PROBES, ProbeBank, ProbeSpec
from pipeline.optim.rules import ALGORITHMS, RULES, make_rule

__all__ = [
    "ALGORITHMS",
    "CLIP_TARGETS",
    "DEFAULT_PROBES",
    "RULES",
    "ProbeBank",
    "ProbeSpec",
    "Rule",
    "RuleOptimizer",
    "State",
    "clip_count",
    "clip_threshold",
    "clip_with_threshold",
    "coordinate_clip",
    "copy_state",
    "make_optimizer",
    "make_rule",
]
