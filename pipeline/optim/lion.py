"""Lion (EvoLved Sign Momentum), with the update clip in place of the sign.

Source: Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms" (arXiv 2302.06675),
Algorithm 2; clipped as in Pan & Li 2023 (arXiv 2306.00204), appendix Algorithms 3-9 (the
momentum variants of the six algorithms; this file's exact number there was not re-checked
offline).

Update rule (m_0 = 0; g~ = clip(g) with clip_target="grad", else g):
    c_t = beta1 m_{t-1} + (1 - beta1) g~_t
    x_{t+1} = x_t - lr (sign(c_t) + weight_decay x_t)
    m_t = beta2 m_{t-1} + (1 - beta2) g~_t
"Clip update" (clip_target="update", fraction k > 0) replaces sign(c_t) by coordinate_clip(c_t, k),
as the paper's code did (sign is the k = 1 end of that family, up to the scale tau): clipping
the signed step itself would be the identity. With fraction 0 the rule is plain Lion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.optim.adam import check_betas
from pipeline.optim.base import Rule, State
from pipeline.optim.clip import clip_with_threshold


@dataclass(frozen=True)
class Lion(Rule):
    betas: tuple[float, float] = (0.9, 0.99)

    algorithm = "lion"
    update_clip_in_direction = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_betas(self.betas)

    def _init(self, params: list[Tensor]) -> State:
        return {"exp_avg": [torch.zeros_like(p) for p in params]}

    def _direction(self, numer, raw, state, params):
        beta1, beta2 = self.betas
        m = state["exp_avg"]
        c = torch._foreach_lerp(m, numer, 1 - beta1)
        if self.clips_update:
            steps, state["clip_tau"] = clip_with_threshold(c, self.clip_fraction)
        else:
            steps = torch._foreach_sign(c)
        torch._foreach_mul_(steps, -self.lr)
        torch._foreach_lerp_(m, numer, 1 - beta2)
        return steps, [self.lr] * len(m)
