"""The probe bank: the paper's probes, weights untouched, clear errors (parity: test_algorithms_table)."""

from __future__ import annotations

import pytest
import torch

from optim_testing import batches, loss_of, make_net
from pipeline.optim import DEFAULT_PROBES, ProbeBank, ProbeSpec

PAPER_LABELS = [
    "sgd", "sgd_clip0.1", "adam", "adam_clip0.5", "adam_clipupdate0.5", "adafactor", "adafactor_clip0.5",
    "lion", "lion_clipupdate0.5", "sign_sgd", "normalized_sgd", "normalized_sgd_clip0.1",
]


def test_default_probes_are_the_papers_twelve():
    assert [s.label for s in DEFAULT_PROBES] == PAPER_LABELS
    by_label = {s.label: s for s in DEFAULT_PROBES}
    assert (by_label["adam_clipupdate0.5"].clip_target, by_label["adam_clipupdate0.5"].clip_fraction) == ("update", 0.5)
    assert by_label["adafactor"].lr is None and by_label["normalized_sgd_clip0.1"].clip_fraction == 0.1


def test_probes_never_touch_weights_or_grads_and_differ_from_each_other():
    net = make_net(torch.float32)
    params = {n: p.detach() for n, p in net.named_parameters()}
    bank = ProbeBank(params)
    snapshot = {n: p.clone() for n, p in params.items()}
    loss_of(net, next(batches(3, torch.float32))).backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    grads_before = {n: g.clone() for n, g in grads.items()}
    bank.step(grads, params)
    assert all(torch.equal(params[n], snapshot[n]) for n in params)
    assert all(torch.equal(grads[n], grads_before[n]) for n in grads)
    directions = bank.directions()
    assert list(directions) == PAPER_LABELS
    flat = {k: torch.cat([t.flatten() for t in v.values()]) for k, v in directions.items()}
    sgd = -grads_before_flat(grads_before)  # lr 1, first step: m_1 = g_1
    assert torch.equal(flat["sgd"], sgd)
    assert torch.equal(flat["sign_sgd"], torch.sign(sgd))
    data = batches(5, torch.float32)
    for _ in range(3):  # at step 1 Lion and signSGD coincide (both sign(g)); later all differ
        net.zero_grad()
        loss_of(net, next(data)).backward()
        bank.step({n: p.grad for n, p in net.named_parameters()}, params)
    flat = {k: torch.cat([t.flatten() for t in v.values()]) for k, v in bank.directions().items()}
    for a in PAPER_LABELS:
        for b in PAPER_LABELS:
            if a < b:
                assert not torch.equal(flat[a], flat[b]), (a, b)


def grads_before_flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads.values()])


def test_directions_are_fresh_tensors():
    net = make_net(torch.float32)
    params = {n: p.detach() for n, p in net.named_parameters()}
    bank = ProbeBank(params, [ProbeSpec("sgd", "sgd")])
    data = batches(4, torch.float32)
    for i in range(2):
        net.zero_grad()
        loss_of(net, next(data)).backward()
        bank.step({n: p.grad for n, p in net.named_parameters()}, params)
        if i == 0:
            first = bank.directions()["sgd"]
            kept = {n: t.clone() for n, t in first.items()}
    assert all(torch.equal(first[n], kept[n]) for n in first)  # a later step does not overwrite them


def test_bad_input():
    params = {"w": torch.zeros(3)}
    with pytest.raises(ValueError, match="params"):
        ProbeBank({})
    with pytest.raises(ValueError, match="unique"):
        ProbeBank(params, [ProbeSpec("a", "sgd"), ProbeSpec("a", "adam")])
    with pytest.raises(ValueError, match="algorithm"):
        ProbeBank(params, [ProbeSpec("x", "adamw")])
    with pytest.raises(ValueError, match="lr"):
        ProbeBank(params, [ProbeSpec("x", "sgd", lr=None)])
    with pytest.raises(ValueError, match="clip_fraction"):
        ProbeBank(params, [ProbeSpec("x", "sgd", clip_fraction=2.0)])
    with pytest.raises(ValueError, match="specs"):
        ProbeBank(params, [])
    bank = ProbeBank(params, [ProbeSpec("sgd", "sgd")])
    with pytest.raises(RuntimeError, match="step"):
        bank.directions()
    with pytest.raises(ValueError, match="grads.*missing"):
        bank.step({"v": torch.zeros(3)}, params)
    with pytest.raises(ValueError, match="shapes"):
        bank.step({"w": torch.zeros(4)}, params)


def test_diagnostics_tau_and_zero_gradient_share_against_a_sort():
    """tau of each clipping probe = the (c+1)-th largest |x| of what it clips (the paper's sort);
    the zero share counts exactly-zero gradient coordinates."""
    net = make_net(torch.float64)
    params = {n: p.detach() for n, p in net.named_parameters()}
    bank = ProbeBank(params)
    loss_of(net, next(batches(3, torch.float64))).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    grads["fc1.weight"][:3] = 0.0  # 3 rows of 6 inputs: 18 exact zeros
    bank.step(grads, params)
    diag = bank.diagnostics()
    total = sum(p.numel() for p in params.values())
    assert diag["grad_zero_fraction"] == int(sum((g == 0).sum() for g in grads.values())) / total
    assert diag["grad_zero_fraction"] >= 18 / total
    flat = torch.cat([g.flatten() for g in grads.values()]).abs().sort(descending=True).values

    def sorted_tau(values: torch.Tensor, fraction: float) -> float:
        return float(values[int(fraction * values.numel() + 1e-6)])

    taus = diag["clip_tau"]
    assert taus["sgd_clip0.1"] == sorted_tau(flat, 0.1)
    assert taus["adam_clip0.5"] == taus["adafactor_clip0.5"] == sorted_tau(flat, 0.5)
    assert taus["sgd"] is None and taus["adam"] is None and taus["lion"] is None
    # clip update: the threshold over Adam's unclipped step (first step: -g/(|g| + eps), lr 1)
    adam = torch.cat([t.flatten() for t in bank.directions()["adam"].values()]).abs().sort(descending=True).values
    assert taus["adam_clipupdate0.5"] == pytest.approx(sorted_tau(adam, 0.5), rel=1e-12)
    # Lion's clip update clips c = (1 - beta1) g at step 1
    assert taus["lion_clipupdate0.5"] == pytest.approx(0.1 * sorted_tau(flat, 0.5), rel=1e-12)


def test_diagnostics_need_a_step():
    net = make_net(torch.float32)
    with pytest.raises(RuntimeError, match="step"):
        ProbeBank({n: p.detach() for n, p in net.named_parameters()}).diagnostics()
