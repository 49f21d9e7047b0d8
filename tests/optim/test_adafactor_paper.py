"""Adafactor against the paper's Algorithms 7 (matrices) and 8 (vectors), written out here."""

from __future__ import annotations

import math

import pytest
import torch

from optim_testing import batches, loss_of, make_net, sort_clip
from pipeline.optim import make_optimizer

STEPS = 25
EPS1, EPS2, D = 1e-30, 1e-3, 1.0


def paper_adafactor(net, steps: int, clip_fraction: float) -> None:
    """Pan & Li's Algorithms 7/8 as printed (row and column *sums*, V = R C / 1^T R, no first moment).

    The global clip over all tensors is the paper's clip(G) (sort_clip, its recipe). A 3-D tensor
    is not in the paper; each of its leading slices is run as a matrix of its own (our extension).
    """
    params = list(net.parameters())
    state = [None] * len(params)
    data = batches(1, torch.float64)
    for t in range(1, steps + 1):
        grads = torch.autograd.grad(loss_of(net, next(data)), params)
        clipped = sort_clip(list(grads), clip_fraction)
        rho = min(1e-2, 1 / math.sqrt(t))
        beta2 = 1 - t ** -0.8
        with torch.no_grad():
            for i, (x, g, gc) in enumerate(zip(params, grads, clipped)):
                alpha = max(EPS2, float(x.pow(2).mean().sqrt())) * rho  # RMS(x_{t-1}) rho_t
                sq = g.pow(2) + EPS1
                if g.dim() == 1:  # Algorithm 8
                    state[i] = (1 - beta2) * sq if state[i] is None else beta2 * state[i] + (1 - beta2) * sq
                    u = gc / state[i].sqrt()
                else:  # Algorithm 7, on every trailing matrix
                    r_new, c_new = sq.sum(-1), sq.sum(-2)  # (G^2 + eps1) 1_n, 1_m^T (G^2 + eps1)
                    if state[i] is None:
                        state[i] = ((1 - beta2) * r_new, (1 - beta2) * c_new)
                    else:
                        r, c = state[i]
                        state[i] = (beta2 * r + (1 - beta2) * r_new, beta2 * c + (1 - beta2) * c_new)
                    r, c = state[i]
                    v = r.unsqueeze(-1) * c.unsqueeze(-2) / r.sum(-1, keepdim=True).unsqueeze(-1)
                    u = gc / v.sqrt()
                u = u / max(1.0, float(u.pow(2).mean().sqrt()) / D)
                x -= alpha * u


@pytest.mark.parametrize("clip_fraction", [0.0, 0.5])
def test_default_adafactor_is_the_papers_algorithm(clip_fraction):
    ours, ref = make_net(), make_net()
    opt = make_optimizer(ours.parameters(), "adafactor", lr=None, clip_fraction=clip_fraction)
    data = batches(1, torch.float64)
    for _ in range(STEPS):
        opt.zero_grad()
        loss_of(ours, next(data)).backward()
        opt.step()
    paper_adafactor(ref, STEPS, clip_fraction)
    start = make_net()
    for a, b, s in zip(ours.parameters(), ref.parameters(), start.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
        assert not torch.equal(a, s)


def test_a_first_moment_departs_from_the_paper():
    """The comparison can fail: transformers' beta1 = 0.9 (our old default) is another algorithm."""
    ours, ref = make_net(), make_net()
    opt = make_optimizer(ours.parameters(), "adafactor", lr=None, beta1=0.9)
    data = batches(1, torch.float64)
    for _ in range(5):
        opt.zero_grad()
        loss_of(ours, next(data)).backward()
        opt.step()
    paper_adafactor(ref, 5, 0.0)
    gap = max(float((a - b).detach().abs().max()) for a, b in zip(ours.parameters(), ref.parameters()))
    assert gap > 1e-4
