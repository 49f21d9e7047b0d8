"""signSGD with momentum (signum): the sign of the SGD momentum.

Source: Bernstein et al. 2018, "signSGD: Compressed Optimisation for Non-Convex Problems"
(signum), as used by Pan & Li 2023 (arXiv 2306.00204), appendix Algorithms 3-9 (the momentum
variants of the six algorithms; this file's exact number there was not re-checked offline).

Update rule:
    m_t as in sgd.py (m_1 = g_1, m_t = beta m_{t-1} + (1 - beta) g_t)
    x_{t+1} = x_t - lr sign(m_t)
"Clip update" is rejected: every coordinate of sign(m) has magnitude 1 (or 0), so the clip
would be the identity and a sweep would silently run an unclipped duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.optim.sgd import SGDMomentum


@dataclass(frozen=True)
class SignSGD(SGDMomentum):
    algorithm = "sign_sgd"
    update_clip_allowed = False

    def _from_momentum(self, m: list[Tensor]) -> list[Tensor]:
        steps = torch._foreach_sign(m)
        torch._foreach_mul_(steps, -self.lr)
        return steps
