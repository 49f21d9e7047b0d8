"""The image workload: ResNet on Fashion-MNIST shaped as CIFAR (real prepared data, tiny size)."""

import numpy as np
import pytest
import torch

from pipeline.data import load_fashion_mnist
from pipeline.workloads import build_workload
from pipeline.workloads.image import fashion_pixels

SPEC = {"name": "image", "size": "tiny", "batch_size": 8, "max_train_examples": 64,
        "max_test_examples": 32}


def build(seed=0, **extra):
    return build_workload({**SPEC, **extra}, seed=seed, device="cpu")


def test_builds_a_cifar_shaped_non_transformer():
    w = build()
    assert w.name == "image" and w.is_transformer is False
    assert set(w.test_batch) == {"pixel_values", "labels"}
    assert w.test_batch["pixel_values"].shape == (8, 3, 32, 32)
    assert w.test_batch["pixel_values"].dtype == torch.float32
    assert w.model.config.num_labels == 10
    assert w.target_count(w.test_batch) == 8
    assert 5e4 < sum(p.numel() for p in w.model.parameters()) < 1e6


def test_trains(train_a_few_steps):
    before, after = train_a_few_steps(build(), steps=8, lr=1e-2)
    assert after < before - 0.1


def test_test_batch_is_seeded(assert_test_batch_seeded):
    assert_test_batch_seeded(build)


def test_functional_loss(assert_functional_loss_matches):
    assert_functional_loss_matches(build())


def test_eval_mode_loss_is_deterministic_and_leaves_batchnorm_alone():
    w = build()
    w.model.eval()
    stats = {n: b.clone() for n, b in w.model.named_buffers()}
    first = w.loss(w.test_batch)
    assert torch.equal(w.loss(w.test_batch), first)
    assert all(torch.equal(b, stats[n]) for n, b in w.model.named_buffers())


def test_pixels_are_padded_normalised_and_repeated():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (2, 28, 28), dtype=np.uint8))
    x = fashion_pixels(images)
    assert x.shape == (2, 3, 32, 32)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    zero = x[0, 0, 0, 0]
    assert torch.all(x[:, :, :2] == zero) and torch.all(x[:, :, :, -2:] == zero)
    # Affine in the raw pixel, increasing: recover it from the two stored constants' effect.
    centre = x[:, 0, 2:30, 2:30]
    scale = (centre.max() - zero) / (images.float().max() / 255)
    assert torch.allclose(centre, zero + scale * images.float() / 255, atol=1e-5)


def test_normalised_training_pixels_have_mean_zero_and_unit_variance():
    images, _ = load_fashion_mnist("train")
    x = fashion_pixels(torch.from_numpy(images[:10000]), torch.float64)
    assert float(x.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(x.std()) == pytest.approx(1.0, abs=0.01)


def test_float64_is_float64_throughout(assert_float64_exact):
    w = build(dtype="float64")
    assert w.test_batch["pixel_values"].dtype == torch.float64
    assert_float64_exact(w)  # in eval mode: BatchNorm on its running statistics
