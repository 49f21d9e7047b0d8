"""Adam, with the clipped gradient in the numerator only.

Source: Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization"; clipped as in Pan & Li
2023 (arXiv 2306.00204), appendix Algorithms 3-9 (the momentum variants of the six algorithms;
this file's exact number there was not re-checked offline). Semantics of torch.optim.Adam
(eps outside the square root, bias correction).

Update rule (t = 1, 2, ...; m_0 = v_0 = 0; g~ = clip(g) with clip_target="grad", else g):
    m_t = beta1 m_{t-1} + (1 - beta1) g~_t          (numerator: clipped gradient)
    v_t = beta2 v_{t-1} + (1 - beta2) g_t^2         (second moment: raw gradient)
    x_{t+1} = x_t - lr (m_t / (1 - beta1^t)) / (sqrt(v_t) / sqrt(1 - beta2^t) + eps)
With clip_target="update" the step itself is clipped (base.Rule). Weight decay is decoupled,
so weight_decay > 0 matches torch.optim.AdamW rather than Adam's L2 penalty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.optim.base import Rule, State, check_number


@dataclass(frozen=True)
class Adam(Rule):
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    algorithm = "adam"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_betas(self.betas)
        if not check_number(self.eps, "eps", high=math.inf) > 0:
            raise ValueError(f"eps must be a positive float; got {self.eps!r}")

    def _init(self, params: list[Tensor]) -> State:
        return {"exp_avg": [torch.zeros_like(p) for p in params],
                "exp_avg_sq": [torch.zeros_like(p) for p in params]}

    def _direction(self, numer, raw, state, params):
        beta1, beta2 = self.betas
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        # The op sequence of torch.optim.Adam's foreach path, so that parity is to the last bit
        # or close to it.
        torch._foreach_lerp_(m, numer, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, raw, raw, 1 - beta2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, (1 - beta2**t) ** 0.5)
        torch._foreach_add_(denom, self.eps)
        steps = torch._foreach_mul(m, -self.lr / (1 - beta1**t))
        torch._foreach_div_(steps, denom)
        return steps, [self.lr] * len(m)


def check_betas(betas: tuple[float, float]) -> tuple[float, float]:
    """Two floats in [0, 1); ValueError naming `betas` otherwise."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair of floats in [0, 1); got {betas!r}")
    return check_number(betas[0], "betas[0]"), check_number(betas[1], "betas[1]")
