"""Normalized SGD with momentum: each tensor's momentum rescaled to RMS 1.

Source: Pan & Li 2023 (arXiv 2306.00204), appendix Algorithms 3-9 (the momentum variants of the
six algorithms; this file's exact number there was not re-checked offline); per-tensor
normalisation as in the paper's code (landscape_utils.NormalizedSGDParams).

Update rule, per tensor X with numel(X) coordinates:
    m_t as in sgd.py (m_1 = g_1, m_t = beta m_{t-1} + (1 - beta) g_t)
    X_{t+1} = X_t - lr m_t / ||m_t||_2 * sqrt(numel(X))
A tensor whose momentum is exactly zero gets a zero step (the paper's code would divide by 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.optim.sgd import SGDMomentum


@dataclass(frozen=True)
class NormalizedSGD(SGDMomentum):
    algorithm = "normalized_sgd"

    def _from_momentum(self, m: list[Tensor]) -> list[Tensor]:
        norms = torch._foreach_norm(m)
        # max(||m||, tiny) turns 0/0 into 0 * huge = 0 without a host sync.
        torch._foreach_clamp_min_(norms, torch.finfo(m[0].dtype).tiny)
        return [mi * (-self.lr * mi.numel() ** 0.5 / n) for mi, n in zip(m, norms)]
