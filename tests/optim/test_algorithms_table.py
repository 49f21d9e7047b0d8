"""Every algorithm in ALGORITHMS, at each clip it supports: probe step == training step, bit for bit."""

from __future__ import annotations

import pytest
import torch

from optim_testing import batches, loss_of, make_net
from pipeline.optim import (
    ALGORITHMS, CLIP_TARGETS, DEFAULT_PROBES, RULES, ProbeBank, ProbeSpec, make_optimizer,
)

STEPS = 3
CLIP_FRACTIONS = (0.0, 0.5)


def table() -> list[ProbeSpec]:
    """One spec per (algorithm, lr, clip fraction, clip target) the algorithm accepts, plus the
    paper's default probes (their own clip fractions and lrs); a new algorithm needs no edit."""
    specs: dict[tuple, ProbeSpec] = {}

    def add(algorithm: str, lr: float | None, fraction: float, target: str) -> None:
        label = f"{algorithm}_lr{lr}_clip{target}{fraction}"
        specs.setdefault((algorithm, lr, fraction, target), ProbeSpec(label, algorithm, fraction, target, lr))

    for algorithm in ALGORITHMS:
        rule = RULES[algorithm]
        for lr in (1e-2, *([None] if rule.relative_step_allowed else [])):
            for fraction in CLIP_FRACTIONS:
                targets = CLIP_TARGETS if fraction > 0 else ("grad",)  # fraction 0: no clip at all
                for target in targets:
                    if target == "update" and not rule.update_clip_allowed:
                        continue
                    add(algorithm, lr, fraction, target)
    for spec in DEFAULT_PROBES:
        add(spec.algorithm, spec.lr, spec.clip_fraction, spec.clip_target)
    return list(specs.values())


TABLE = table()


def test_the_table_covers_every_registered_rule():
    assert set(ALGORITHMS) == set(RULES)
    assert {s.algorithm for s in TABLE} == set(ALGORITHMS)
    assert all(any(s.algorithm == a and s.clip_fraction == 0.5 for s in TABLE) for a in ALGORITHMS)


@pytest.mark.parametrize("spec", TABLE, ids=[s.label for s in TABLE])
def test_probe_and_training_optimizer_take_identical_steps(spec):
    """The probe (in a bank holding the whole table, so clipped gradients are shared) predicts
    the training optimizer's displacement exactly at every step, and leaves the weights and the
    gradients alone; its steps are finite and not all zero."""
    net = make_net(torch.float32)
    names = [n for n, _ in net.named_parameters()]
    opt = make_optimizer(net.parameters(), spec.algorithm, lr=spec.lr, clip_fraction=spec.clip_fraction,
                         clip_target=spec.clip_target, **spec.hparams)
    live = {n: p.detach() for n, p in net.named_parameters()}  # the weights themselves, not copies
    bank = ProbeBank(live, TABLE)
    data = batches(2, torch.float32)
    for _ in range(STEPS):
        opt.zero_grad()
        loss_of(net, next(data)).backward()
        grads = {n: p.grad for n, p in net.named_parameters()}
        before = {n: p.clone() for n, p in live.items()}
        grads_before = {n: g.clone() for n, g in grads.items()}
        bank.step(grads, live)
        assert all(torch.equal(live[n], before[n]) for n in names)
        assert all(torch.equal(grads[n], grads_before[n]) for n in names)
        opt.step()
        direction = bank.directions()[spec.label]
        assert list(direction) == names
        for n in names:
            assert torch.equal(before[n] + direction[n], live[n]), (spec.label, n)
        flat = torch.cat([direction[n].flatten() for n in names])
        assert bool(torch.isfinite(flat).all()) and bool((flat != 0).any()), spec.label
