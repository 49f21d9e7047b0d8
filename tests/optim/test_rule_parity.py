"""Each algorithm, unclipped, against its canonical implementation or a closed form (>= 20 steps)."""

from __future__ import annotations

import pytest
import torch
from transformers.optimization import Adafactor as HFAdafactor

from optim_testing import batches, loss_of, make_net, run_pair
from pipeline.optim import copy_state, make_optimizer, make_rule

STEPS = 25


def test_sgd_momentum_matches_torch_sgd_with_dampening():
    gaps = run_pair(make_net(), lambda p: make_optimizer(p, "sgd", lr=0.05, momentum=0.8),
                    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.8), STEPS, torch.float64)
    assert max(gaps) < 1e-14  # torch fuses lr into add_(alpha=): last-bit differences only


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_torch(weight_decay):
    reference = torch.optim.AdamW if weight_decay else torch.optim.Adam
    gaps = run_pair(
        make_net(),
        lambda p: make_optimizer(p, "adam", lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay),
        lambda p: reference(p, lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay),
        STEPS, torch.float64)
    assert max(gaps) < 1e-13


@pytest.mark.parametrize(
    ("lr", "ours", "theirs"),
    [
        (None, {}, {"relative_step": True}),  # the paper's relative step, no first moment (default)
        (None, {"beta1": 0.9}, {"beta1": 0.9, "relative_step": True}),  # transformers' momentum
        (None, {"beta1": 0.0}, {"relative_step": True}),  # beta1 = 0 is no first moment too
        (None, {"scale_parameter": False}, {"relative_step": True, "scale_parameter": False}),
        (1e-2, {"beta1": 0.9}, {"beta1": 0.9, "relative_step": False}),  # fixed lr, scaled by RMS(x)
        (3e-2, {"scale_parameter": False, "clip_threshold": 0.5, "decay_rate": -0.6, "weight_decay": 0.1},
         {"relative_step": False, "scale_parameter": False, "clip_threshold": 0.5, "decay_rate": -0.6,
          "weight_decay": 0.1}),
    ],
)
def test_adafactor_matches_transformers(lr, ours, theirs):
    theirs = {"beta1": None, "warmup_init": False, **theirs}
    gaps = run_pair(make_net(), lambda p: make_optimizer(p, "adafactor", lr=lr, **ours),
                    lambda p: HFAdafactor(p, lr=lr, **theirs), STEPS, torch.float64)
    assert max(gaps) < 1e-12


def closed_form_run(algorithm: str, steps: int, **h) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Our optimizer and the update rule written out here by hand, on two copies of one net."""
    ours, ref = make_net(), make_net()
    opt = make_optimizer(ours.parameters(), algorithm, lr=h["lr"], **{k: v for k, v in h.items() if k != "lr"})
    state = [dict(m=torch.zeros_like(p)) for p in ref.parameters()]
    data = batches(1, torch.float64)
    for t in range(1, steps + 1):
        batch = next(data)
        opt.zero_grad()
        loss_of(ours, batch).backward()
        opt.step()
        grads = torch.autograd.grad(loss_of(ref, batch), list(ref.parameters()))
        with torch.no_grad():
            for p, g, s in zip(ref.parameters(), grads, state):
                if algorithm == "lion":
                    b1, b2 = h["betas"]
                    c = b1 * s["m"] + (1 - b1) * g
                    p -= h["lr"] * torch.sign(c)
                    s["m"] = b2 * s["m"] + (1 - b2) * g
                    continue
                beta = h["momentum"]
                s["m"] = g.clone() if t == 1 else beta * s["m"] + (1 - beta) * g
                if algorithm == "sign_sgd":
                    p -= h["lr"] * torch.sign(s["m"])
                else:  # normalized_sgd, per tensor
                    p -= h["lr"] * s["m"] / s["m"].norm() * s["m"].numel() ** 0.5
    return ours, ref


@pytest.mark.parametrize(
    ("algorithm", "hparams"),
    [("sign_sgd", {"lr": 1e-3, "momentum": 0.7}),
     ("normalized_sgd", {"lr": 1e-3, "momentum": 0.7}),
     ("lion", {"lr": 1e-3, "betas": (0.8, 0.97)})],
)
def test_closed_forms(algorithm, hparams):
    ours, ref = closed_form_run(algorithm, STEPS, **hparams)
    start = make_net()
    for a, b, s in zip(ours.parameters(), ref.parameters(), start.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        assert not torch.equal(a, s)  # the runs did move


def test_parity_would_catch_a_wrong_rule():
    """The closed-form harness is sensitive: a different momentum gives a visible gap."""
    _, ref = closed_form_run("normalized_sgd", 5, lr=1e-3, momentum=0.7)
    other = make_net()
    opt = make_optimizer(other.parameters(), "normalized_sgd", lr=1e-3, momentum=0.5)
    data = batches(1, torch.float64)
    for _ in range(5):
        opt.zero_grad()
        loss_of(other, next(data)).backward()
        opt.step()
    with torch.no_grad():
        gap = max(float((a - b).abs().max()) for a, b in zip(other.parameters(), ref.parameters()))
    assert gap > 1e-6


@pytest.mark.parametrize("algorithm", ["adam", "adafactor"])
def test_copy_state_is_deep(algorithm):
    net = make_net()
    params = [p.detach() for p in net.parameters()]
    rule = make_rule(algorithm, lr=1e-2)
    state = rule.init(params)
    grads = [torch.randn_like(p) for p in params]
    rule.update(grads, state, params)
    branch = copy_state(state)
    steps_a, _ = rule.update(grads, state, params)
    steps_b, _ = rule.update(grads, branch, params)  # the same step from the copied state
    assert all(torch.equal(a, b) for a, b in zip(steps_a, steps_b))
    assert branch["step"] == state["step"] == 2
