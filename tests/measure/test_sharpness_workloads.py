"""Both sharpness methods against an independent double backward on every real workload model.

Guards the HVP methods where they are used: GPT-Neo, T5, BERT (eager attention, LayerNorm / RMS
norm) and the ResNet (BatchNorm in eval mode), built by pipeline.workloads at tiny size on the
prepared corpora (`python -m pipeline setup`), with probe-bank directions from real gradients.
"""

from __future__ import annotations

import math

import pytest
import torch
from measure_testing import double_backward_sharpness

from pipeline.measure import directional_sharpness, sharpness_with_robust
from pipeline.optim import DEFAULT_PROBES, ProbeBank
from pipeline.workloads import build_workload

SPECS = {
    "causal_lm": {"seq_len": 16, "batch_size": 4, "test_batch_size": 4},
    "translation": {"seq_len": 16, "batch_size": 4, "test_batch_size": 4},
    "classification": {"seq_len": 16, "batch_size": 4, "test_batch_size": 4},
    "image": {"batch_size": 4, "test_batch_size": 4},
}
# Four probes of different character (plain, clipped, adaptive, sign-like) keep the test fast;
# tests/measure/test_directional_sharpness.py covers all twelve on GPT-Neo.
PROBES = ("sgd", "adam_clip0.5", "adafactor", "lion")


@pytest.mark.parametrize("name", list(SPECS))
def test_sharpness_methods_match_double_backward(name):
    spec = {"name": name, "size": "tiny", "max_train_examples": 16, "max_test_examples": 8,
            **SPECS[name]}
    workload = build_workload(spec, seed=0, device="cpu")
    model = workload.model.eval()  # the measurement's mode: no dropout, BatchNorm running stats
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    bank = ProbeBank(params, [s for s in DEFAULT_PROBES if s.label in PROBES])
    batches = workload.train_batches()
    for _ in range(2):
        live = {n: p.clone().requires_grad_(True) for n, p in params.items()}
        grads = torch.autograd.grad(workload.loss(next(batches), live), list(live.values()))
        bank.step(dict(zip(params, grads)), params)
    directions = bank.directions()
    loss_fn = workload.loss_fn(workload.test_batch)
    got = directional_sharpness(loss_fn, params, directions, method="forward_over_reverse")
    other = sharpness_with_robust(loss_fn, params, directions, method="double_backward")
    for label, v in directions.items():
        # NaN on all sides for a zero direction: on BERT, adam_clip0.5's update can be exactly
        # zero when over half of the gradient coordinates (unused embedding rows) are zero.
        reference = pytest.approx(double_backward_sharpness(loss_fn, params, v), rel=1e-3,
                                  abs=1e-6, nan_ok=True)
        assert got[label] == reference and other[label].raw == reference, (name, label)
    assert sum(math.isfinite(x) for x in got.values()) >= 3
