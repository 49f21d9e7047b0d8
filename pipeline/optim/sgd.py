"""SGD with momentum, the paper's baseline and its training optimizer.

Source: Pan & Li 2023, "Toward Understanding Why Adam Converges Faster Than SGD for
Transformers" (arXiv 2306.00204), Algorithm 1 (SGD momentum with clipping) and the appendix's
momentum SGD (Algorithms 3-9 cover the six algorithms; this file's exact number there was not
re-checked offline).

Update rule (EMA momentum, as torch.optim.SGD(momentum=beta, dampening=beta)):
    m_1 = g_1,   m_t = beta m_{t-1} + (1 - beta) g_t   (t > 1)
    x_{t+1} = x_t - lr m_t
m_1 = g_1 follows torch.optim.SGD and the paper's code (no bias towards zero at the first step).
With clip_target="grad", g_t is the clipped gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.optim.base import Rule, State, check_number


@dataclass(frozen=True)
class SGDMomentum(Rule):
    momentum: float = 0.9

    algorithm = "sgd"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self.momentum, "momentum")

    def _init(self, params: list[Tensor]) -> State:
        return {"momentum": [torch.zeros_like(p) for p in params]}

    def _direction(self, numer, raw, state, params):
        m = state["momentum"]
        if state["step"] == 1:
            torch._foreach_copy_(m, numer)
        else:
            # Same two ops as torch.optim.SGD: buf.mul_(momentum).add_(grad, alpha=1 - dampening).
            torch._foreach_mul_(m, self.momentum)
            torch._foreach_add_(m, numer, alpha=1 - self.momentum)
        return self._from_momentum(m), [self.lr] * len(m)

    def _from_momentum(self, m: list[Tensor]) -> list[Tensor]:
        """The step from the momentum buffers (overridden by signSGD and normalized SGD)."""
        return torch._foreach_mul(m, -self.lr)
