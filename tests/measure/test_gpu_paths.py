"""The accelerator paths against the host (skipped without CUDA; run by scripts/gpu_check.sh).

On a GPU, "auto" picks forward-over-reverse (vmapped), the probe bank keeps its state on the
device and the clip threshold is selected there: each is checked here against the CPU path,
which the rest of the suite checks against float64 brute force.
"""

from __future__ import annotations

import pytest
import torch
from measure_testing import double_backward_sharpness, tiny_gpt_neo

from pipeline.measure import directional_sharpness, sharpness_with_robust
from pipeline.measure.hvp import resolve_method
from pipeline.optim import DEFAULT_PROBES, ProbeBank, clip_threshold

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def _to(vec, device, dtype=None):
    return {n: t.to(device=device, dtype=dtype or t.dtype) for n, t in vec.items()}


def _bank_directions(loss_on, params, batches):
    bank = ProbeBank(params)
    for ids in batches:
        live = {n: p.clone().requires_grad_(True) for n, p in params.items()}
        grads = torch.autograd.grad(loss_on(ids)(live), list(live.values()))
        bank.step(dict(zip(params, grads)), params)
    return bank.directions()


def test_auto_is_forward_over_reverse_on_cuda_and_matches_the_host():
    model, loss_on, params, batches = tiny_gpt_neo(hidden=64, seq=32, batch=8)
    directions = _bank_directions(loss_on, params, batches[:3])  # CPU: the reference
    host = {k: double_backward_sharpness(loss_on(batches[3]), params, v) for k, v in directions.items()}
    model.to(CUDA)
    gpu_params = _to(params, CUDA)
    gpu_dirs = {k: _to(v, CUDA) for k, v in directions.items()}
    ids = batches[3].to(CUDA)
    assert resolve_method("auto", gpu_params) == "forward_over_reverse"
    got = directional_sharpness(loss_on(ids), gpu_params, gpu_dirs)
    other = directional_sharpness(loss_on(ids), gpu_params, gpu_dirs, method="double_backward", chunk_size=3)
    robust_host = sharpness_with_robust(loss_on(batches[3]), params, directions)
    robust_gpu = sharpness_with_robust(loss_on(ids), gpu_params, gpu_dirs)
    for label in directions:
        assert got[label] == pytest.approx(host[label], rel=1e-3, abs=1e-6, nan_ok=True), label
        assert other[label] == pytest.approx(host[label], rel=1e-3, abs=1e-6, nan_ok=True), label
        assert robust_gpu[label].robust == robust_host[label].robust, label
        assert robust_gpu[label].value == pytest.approx(robust_host[label].value, rel=1e-3, abs=1e-6,
                                                        nan_ok=True), label


def test_probe_bank_and_clip_threshold_stay_on_the_device_and_match_the_host():
    _, loss_on, params, batches = tiny_gpt_neo()
    host = _bank_directions(loss_on, params, batches)
    gpu_params = _to(params, CUDA)
    bank = ProbeBank(gpu_params)
    assert [s.label for s in DEFAULT_PROBES] == bank.labels
    grads_seen = []
    for ids in batches:
        live = {n: p.clone().requires_grad_(True) for n, p in params.items()}
        grads = torch.autograd.grad(loss_on(ids)(live), list(live.values()))
        grads_seen.append(grads)
        bank.step({n: g.to(CUDA) for n, g in zip(params, grads)}, gpu_params)
    got = bank.directions()
    for label, vec in got.items():
        for n, t in vec.items():
            assert t.device.type == "cuda", (label, n)
            torch.testing.assert_close(t.cpu(), host[label][n], rtol=1e-4, atol=1e-7)
    gpu_grads = [g.to(CUDA) for g in grads_seen[-1]]
    for fraction in (0.0, 0.1, 0.5, 1.0):
        tau = clip_threshold(gpu_grads, fraction)
        assert tau.device.type == "cuda"
        assert float(tau) == float(clip_threshold(list(grads_seen[-1]), fraction))
