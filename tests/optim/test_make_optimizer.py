"""make_optimizer: input checks, clipped training optimizers that really clip, the paper's quadratic."""

from __future__ import annotations

import pytest
import torch

from optim_testing import batches, loss_of, make_net, sort_clip
from pipeline.optim import make_optimizer


def params_that_must_not_be_touched():
    raise AssertionError("params were read before the arguments were checked")
    yield  # pragma: no cover


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"algorithm": "adamw", "lr": 0.1}, "algorithm"),
        ({"algorithm": "sgd", "lr": 0.1, "clip_fraction": 1.5}, "clip_fraction"),
        ({"algorithm": "sgd", "lr": 0.1, "clip_fraction": -0.1}, "clip_fraction"),
        ({"algorithm": "adam", "lr": 0.1, "clip_target": "both"}, "clip_target"),
        ({"algorithm": "sign_sgd", "lr": 0.1, "clip_fraction": 0.5, "clip_target": "update"}, "clip_target"),
        ({"algorithm": "sgd", "lr": 0.0}, "lr"),
        ({"algorithm": "adam", "lr": -1e-3}, "lr"),
        ({"algorithm": "lion", "lr": float("nan")}, "lr"),
        ({"algorithm": "sgd", "lr": None}, "lr"),
        ({"algorithm": "adam", "lr": 0.1, "momentum": 0.9}, "hparams"),
        ({"algorithm": "sgd", "lr": 0.1, "momentum": 1.0}, "momentum"),
        ({"algorithm": "adam", "lr": 0.1, "betas": (0.9,)}, "betas"),
        ({"algorithm": "adam", "lr": 0.1, "eps": 0.0}, "eps"),
        ({"algorithm": "adafactor", "lr": 0.1, "relative_step": True}, "relative_step"),
        ({"algorithm": "adafactor", "lr": None, "decay_rate": 0.5}, "decay_rate"),
        ({"algorithm": "sgd", "lr": 0.1, "weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_bad_arguments_raise_before_any_state(kwargs, named):
    algorithm = kwargs.pop("algorithm")
    with pytest.raises(ValueError, match=named):
        make_optimizer(params_that_must_not_be_touched(), algorithm, **kwargs)


def test_one_param_group_only():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="param groups"):
        make_optimizer([{"params": [a]}, {"params": [b]}], "sgd", lr=0.1)


def first_step(algorithm: str, clip_fraction: float, clip_target: str = "grad", **h):
    """One step from a fresh optimizer on the tiny net: (weights before, steps taken, grads)."""
    net = make_net()
    opt = make_optimizer(net.parameters(), algorithm, clip_fraction=clip_fraction, clip_target=clip_target, **h)
    batch = next(batches(1, torch.float64))
    before = [p.detach().clone() for p in net.parameters()]
    loss_of(net, batch).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    opt.step()
    return before, [p.detach() - b for p, b in zip(net.parameters(), before)], grads


def assert_steps_close(steps, expected):
    for s, e in zip(steps, expected):
        torch.testing.assert_close(s, e, rtol=1e-9, atol=1e-14)


def test_clipped_sgd_really_clips():
    _, steps, grads = first_step("sgd", 0.5, lr=0.1, momentum=0.9)
    _, unclipped, _ = first_step("sgd", 0.0, lr=0.1, momentum=0.9)
    assert_steps_close(steps, [-0.1 * c for c in sort_clip(grads, 0.5)])  # m_1 = clip(g_1)
    assert any(not torch.allclose(a, b) for a, b in zip(steps, unclipped))


def test_clipped_adam_numerator_only():
    _, steps, grads = first_step("adam", 0.5, lr=1e-2, eps=1e-8)
    # t = 1: m_hat = clip(g), v_hat = g^2 (raw), step = -lr clip(g) / (|g| + eps).
    expected = [-1e-2 * c / (g.abs() + 1e-8) for c, g in zip(sort_clip(grads, 0.5), grads)]
    assert_steps_close(steps, expected)
    _, unclipped, _ = first_step("adam", 0.0, lr=1e-2)
    assert any(not torch.allclose(a, b) for a, b in zip(steps, unclipped))


def test_clip_update_adam_and_lion():
    net_steps = {}
    for algorithm, h in (("adam", {"lr": 1e-2, "eps": 1e-2}), ("lion", {"lr": 1e-2})):
        _, steps, grads = first_step(algorithm, 0.5, "update", **h)
        if algorithm == "adam":  # big eps so that |u| = |g| / (|g| + eps) spreads out
            raw = [g / (g.abs() + 1e-2) for g in grads]
        else:  # Lion from m_0 = 0: c_1 = (1 - beta1) g_1, and the clip replaces the sign
            raw = [0.1 * g for g in grads]
        assert_steps_close(steps, [-1e-2 * c for c in sort_clip(raw, 0.5)])
        net_steps[algorithm] = steps
    _, lion_plain, _ = first_step("lion", 0.0, lr=1e-2)
    assert all(torch.allclose(s.abs(), torch.full_like(s, 1e-2)) for s in lion_plain)  # plain Lion: sign
    assert any(not torch.allclose(a, b) for a, b in zip(net_steps["lion"], lion_plain))


def test_clipped_adafactor_numerator_only():
    before, steps, grads = first_step("adafactor", 0.5, lr=None, beta1=0.9)
    expected = []
    for x, g, c in zip(before, grads, sort_clip(grads, 0.5)):
        sq = g**2 + 1e-30  # t = 1: beta2_1 = 0, so the second moment is this step's g^2 + eps1
        if g.dim() >= 2:
            row, col = sq.mean(-1), sq.mean(-2)
            inv_sqrt_v = (row / row.mean(-1, keepdim=True)).rsqrt().unsqueeze(-1) * col.unsqueeze(-2).rsqrt()
        else:
            inv_sqrt_v = sq.rsqrt()
        u = c * inv_sqrt_v
        u = u / torch.clamp(u.pow(2).mean().sqrt(), min=1.0)
        alpha = torch.clamp(x.pow(2).mean().sqrt(), min=1e-3) * 1e-2  # rho_1 = min(1e-2, 1)
        expected.append(-(1 - 0.9) * alpha * u)
    assert_steps_close(steps, expected)
    _, unclipped, _ = first_step("adafactor", 0.0, lr=None, beta1=0.9)
    assert any(not torch.allclose(a, b) for a, b in zip(steps, unclipped))


def test_lr_scheduler_is_followed():
    x = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = make_optimizer([x], "sgd", lr=0.1, momentum=0.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    moves = []
    for _ in range(2):
        x.grad = torch.tensor([1.0, 1.0], dtype=torch.float64)
        before = x.detach().clone()
        opt.step()
        sched.step()
        moves.append(float((before - x.detach())[0]))
    assert moves == pytest.approx([0.1, 0.05])


def quadratic_run(lr: float, clip_fraction: float, steps: int = 200) -> float:
    """f(x) = x^T A x with A = diag(100, 1, ..., 1) in 20 dims, from x = 1; returns f_T / f_0."""
    a = torch.ones(20, dtype=torch.float64)
    a[0] = 100.0
    x = torch.nn.Parameter(torch.ones(20, dtype=torch.float64))
    # momentum 0: plain (clipped) gradient descent, whose stability limit is lr < 2 / 200.
    opt = make_optimizer([x], "sgd", lr=lr, clip_fraction=clip_fraction, momentum=0.0)
    f0 = float((a * x.detach() ** 2).sum())
    for _ in range(steps):
        opt.zero_grad()
        (a * x * x).sum().backward()
        opt.step()
    return float((a * x.detach() ** 2).sum()) / f0


def test_paper_quadratic_clipping_allows_a_10x_larger_lr():
    """Pan & Li's introduction: the one sharp coordinate forces GD's lr below 1/100; clipping
    the top 5% of |g| (here: that one coordinate of 20), momentum 0, converges at 10x that."""
    assert quadratic_run(0.0099, 0.0) < 1e-3  # just below the limit GD still converges
    assert not quadratic_run(0.011, 0.0) < 1e6  # just above it, it diverges (or overflows)
    assert quadratic_run(0.11, 0.05) < 1e-12  # clipped: 10x the lr
    assert quadratic_run(0.5, 0.05) < 1e-12


def test_sgd_with_fraction_one_points_along_sign():
    _, steps, grads = first_step("sgd", 1.0, lr=0.1, momentum=0.9)
    flat_step, flat_g = torch.cat([s.flatten() for s in steps]), torch.cat([g.flatten() for g in grads])
    tau = flat_g.abs().min()  # no zero gradients here, so tau is the smallest |g|
    torch.testing.assert_close(flat_step, -0.1 * tau * torch.sign(flat_g), rtol=1e-9, atol=1e-15)
