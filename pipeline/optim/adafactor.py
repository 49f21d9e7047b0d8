"""Adafactor, the clipped gradient in the numerator only; no first moment unless beta1 is set.

Source: Shazeer & Stern 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost"
(arXiv 1804.04235), Algorithms 4 (matrices, factored) and 5 (vectors); as Pan & Li 2023 (arXiv
2306.00204) state it, with the clip, in their Algorithms 7 (weight matrices) and 8 (weight
vectors). Op for op the step of transformers.optimization.Adafactor, which the paper's runs used.

Update rule for a tensor X at step t (g~ = clip(g) with clip_target="grad", else g):
    rho_t   = min(1e-2, 1/sqrt(t))        if lr is None (relative step), else lr
    alpha_t = max(eps2, RMS(X_t)) rho_t   if scale_parameter, else rho_t
    beta2_t = 1 - t^decay_rate            (decay_rate = -0.8)
    V       = beta2_t V + (1 - beta2_t) (g^2 + eps1)      (raw gradient; for matrices the
              factored form: row and column means R, C, and 1/sqrt(V) ~ rsqrt(R / mean(R))
              rsqrt(C), which equals the paper's R C / (1^T R) with sums)
    U       = g~ / sqrt(V)                (numerator: clipped gradient)
    U       = U / max(1, RMS(U) / d)      (update clipping, d = clip_threshold = 1)
    m_t     = alpha_t U                   (beta1 None or 0: the paper's Algorithms 7-8 and the
                                           authors' probe, the default)
    m_t     = beta1 m_{t-1} + (1 - beta1) alpha_t U      (beta1 > 0: transformers' momentum,
                                           over the *scaled* update alpha_t U, not the gradient)
    X_{t+1} = X_t - m_t - weight_decay alpha_t X_t

Tensors of 3 or more dimensions (the ResNet's convolution kernels; the transformer workloads
have none) are factored over their last two dimensions: each index of the leading dimensions is
a matrix of its own with its own R and C, as in transformers' and fairseq's Adafactor. The
paper defines only matrices and vectors (Algorithms 7, 8) and the authors' probe factored 2-D
tensors only, so on such tensors this is our extension, not the paper's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.optim.base import Rule, State, check_number


@dataclass(frozen=True)
class Adafactor(Rule):
    beta1: float | None = None  # None or 0: no first moment (paper Algorithms 7-8)
    decay_rate: float = -0.8
    eps: tuple[float, float] = (1e-30, 1e-3)
    clip_threshold: float = 1.0
    scale_parameter: bool = True
    relative_step: bool | None = None  # None: derived from lr (lr=None <=> relative step)

    algorithm = "adafactor"
    relative_step_allowed = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.relative_step is not None and self.relative_step != (self.lr is None):
            raise ValueError("relative_step must match lr: relative_step=True needs lr=None and "
                             f"relative_step=False a float lr; got relative_step={self.relative_step!r}, "
                             f"lr={self.lr!r}")
        if self.beta1 is not None:
            check_number(self.beta1, "beta1")
        if isinstance(self.decay_rate, bool) or not isinstance(self.decay_rate, (int, float)) \
                or not -1.0 <= self.decay_rate < 0:
            raise ValueError(f"decay_rate must be a float in [-1, 0); got {self.decay_rate!r}")
        if not isinstance(self.eps, (tuple, list)) or len(self.eps) != 2 \
                or not all(check_number(e, "eps", high=math.inf) > 0 for e in self.eps):
            raise ValueError(f"eps must be a pair of positive floats (eps1, eps2); got {self.eps!r}")
        if not check_number(self.clip_threshold, "clip_threshold", high=math.inf) > 0:
            raise ValueError(f"clip_threshold must be a positive float; got {self.clip_threshold!r}")
        if not isinstance(self.scale_parameter, bool):
            raise ValueError(f"scale_parameter must be True or False; got {self.scale_parameter!r}")

    @property
    def has_first_moment(self) -> bool:
        return self.beta1 is not None and self.beta1 > 0

    def _init(self, params: list[Tensor]) -> State:
        state: State = {"second_moment": [], "exp_avg": []}
        for p in params:
            if p.dim() >= 2:  # factored: (row means, column means)
                state["second_moment"].append((p.new_zeros(p.shape[:-1]), p.new_zeros(p.shape[:-2] + p.shape[-1:])))
            else:
                state["second_moment"].append(torch.zeros_like(p))
            if self.has_first_moment:
                state["exp_avg"].append(torch.zeros_like(p))
        return state

    def _direction(self, numer, raw, state, params):
        t = state["step"]
        rho = min(1e-2, 1.0 / math.sqrt(t)) if self.lr is None else self.lr
        beta2t = 1.0 - math.pow(t, self.decay_rate)
        eps1, eps2 = self.eps
        steps, alphas = [], []
        for i, (g_num, g, x) in enumerate(zip(numer, raw, params)):
            alpha = torch.clamp(_rms(x), min=eps2) * rho if self.scale_parameter else rho
            sq = g**2 + eps1
            moment = state["second_moment"][i]
            if isinstance(moment, tuple):
                row, col = moment
                row.mul_(beta2t).add_(sq.mean(dim=-1), alpha=1.0 - beta2t)
                col.mul_(beta2t).add_(sq.mean(dim=-2), alpha=1.0 - beta2t)
                r_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1)
                u = torch.mul(r_factor, col.unsqueeze(-2).rsqrt()).mul_(g_num)
            else:
                moment.mul_(beta2t).add_(sq, alpha=1.0 - beta2t)
                u = moment.rsqrt().mul_(g_num)
            u.div_((_rms(u) / self.clip_threshold).clamp_(min=1.0))
            u.mul_(alpha)
            if self.has_first_moment:
                m = state["exp_avg"][i]
                m.mul_(self.beta1).add_(u, alpha=1 - self.beta1)
                u = m.neg()
            else:
                u.neg_()
            steps.append(u)
            alphas.append(alpha)
        return steps, alphas


def _rms(x: Tensor) -> Tensor:
    return x.norm(2) / (x.numel() ** 0.5)
