"""`make_optimizer`: a thin torch.optim.Optimizer over a rule (the training optimizers)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from pipeline.optim.base import Rule, State
from pipeline.optim.rules import make_rule


class RuleOptimizer(torch.optim.Optimizer):
    """Applies `rule` to all its parameters at once: `p.add_(step)` for each.

    One parameter group only, because the clip threshold is global over every parameter of the
    optimizer. A parameter whose .grad is None counts as a zero gradient (it still enters the
    global clip and the moments), unlike torch.optim which skips it. `param_groups[0]["lr"]` is
    read at every step, so LR schedulers work; the rule state lives in `self.rule_state`
    (not in `state_dict()`).
    """

    def __init__(self, params: Iterable[Tensor], rule: Rule) -> None:
        super().__init__(params, {"lr": rule.lr})
        if len(self.param_groups) != 1:
            raise ValueError("params must be one group of tensors (the clip is global over all of "
                             f"them); got {len(self.param_groups)} param groups")
        self.rule = rule
        self.rule_state: State = rule.init(self.param_groups[0]["params"])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        if group["lr"] != self.rule.lr:  # set by a scheduler
            self.rule = replace(self.rule, lr=group["lr"])
        params = group["params"]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        steps, self.rule_state = self.rule.update(grads, self.rule_state, params)
        torch._foreach_add_(params, steps)
        return loss


def make_optimizer(params: Iterable[Tensor], algorithm: str, *, lr: float | None,
                   clip_fraction: float = 0.0, clip_target: str = "grad",
                   **hparams: Any) -> torch.optim.Optimizer:
    """The training optimizer for `algorithm`, from the same rule the probe bank uses.

    All arguments are checked (ValueError naming the argument and the allowed values) before any
    state is created. `lr=None` is Adafactor's relative step. The clip spans all `params`.
    """
    rule = make_rule(algorithm, lr=lr, clip_fraction=clip_fraction, clip_target=clip_target, **hparams)
    return RuleOptimizer(params, rule)
