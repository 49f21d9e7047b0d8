"""Image classification workload: a ResNet on Fashion-MNIST shaped as CIFAR (hub: CIFAR-10).

The paper's Appendix E control: a non-transformer, where Adam's edge over SGD is small. The
model has BatchNorm, so its loss depends on the mode: training uses batch statistics, while
measurements (eval mode: docs/science.md) use the running statistics, which makes
the loss on the fixed test batch a deterministic function of the weights.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import ResNetConfig, ResNetForImageClassification

import pipeline.data as data
from pipeline.workloads.base import (
    DTYPES, Workload, count_targets, fixed_subset, seeded, token_cross_entropy,
)
from pipeline.workloads.definitions import WORKLOADS

# Mean and std of the Fashion-MNIST training pixels *after* zero-padding 28x28 -> 32x32, in
# [0, 1] (computed once over all 60,000 training images; tests/workloads checks them).
FASHION_MEAN, FASHION_STD = 0.2190, 0.3318
# CIFAR-10's usual per-channel training statistics (RGB).
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
DEFINITION = WORKLOADS["image"]  # presets, spec keys and facts (pipeline.workloads.definitions)
NUM_CLASSES = DEFINITION.num_classes
# transformers' ResNet keeps the ImageNet stem (7x7 stride-2 convolution + max-pool), so a 32x32
# image is 8x8 when it enters the first stage. Paper = ResNet-152 (App. E: bottleneck blocks, stages
# of 3/8/36/3, ~58M parameters with a ten-class head); tiny ~0.08M parameters.
DIMS: dict[str, dict[str, Any]] = {
    "tiny": {"embedding_size": 16, "hidden_sizes": [16, 32, 64], "depths": [1, 1, 1]},
    "small": {"embedding_size": 32, "hidden_sizes": [32, 64, 128, 256], "depths": [1, 1, 1, 1]},
    "paper": {"embedding_size": 64, "hidden_sizes": [256, 512, 1024, 2048], "depths": [3, 8, 36, 3],
              "layer_type": "bottleneck"},
}


def build(spec: Mapping[str, Any], *, seed: int, device: torch.device) -> Workload:
    dtype = DTYPES[spec["dtype"]]
    hub = spec["source"] == "hub"
    train, test = _images(spec, "train"), _images(spec, "test")
    with seeded(seed, "model-init"):
        config = ResNetConfig(num_channels=3, num_labels=NUM_CLASSES,
                              **{"layer_type": "basic", "hidden_act": "relu",
                                 **DIMS[spec["size"]], **spec["model"]})
        model = ResNetForImageClassification(config).train()
    return Workload(
        name=DEFINITION.name, is_transformer=DEFINITION.is_transformer,
        model=model.to(device=device, dtype=dtype),
        train_examples=train, test_examples=test,
        collate=functools.partial(_collate, cifar=hub, dtype=dtype),
        criterion=functools.partial(token_cross_entropy, shift=False),  # (B, 10), (B,)
        target_count=functools.partial(count_targets, shift=False),
        batch_size=spec["batch_size"], test_batch_size=spec["test_batch_size"],
        seed=seed, device=device,
    )


def _images(spec: Mapping[str, Any], split: str) -> dict[str, torch.Tensor]:
    """Raw uint8 images and int64 labels; they become model inputs batch by batch (_collate)."""
    if spec["source"] == "hub":
        images, labels = data.load_hub_images(split)  # raises HubUnavailableError offline
    else:
        images, labels = data.load_fashion_mnist(split, data_dir=spec["data_dir"])
    keep = fixed_subset(range(len(labels)), spec[f"max_{split}_examples"])
    return {"pixels": torch.from_numpy(np.ascontiguousarray(images[keep])),
            "labels": torch.from_numpy(np.asarray(labels[keep], dtype=np.int64))}


def fashion_pixels(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B, 28, 28) -> normalised (B, 3, 32, 32): zero-pad 2 pixels a side (CIFAR's size),
    normalise, repeat the grey channel three times (CIFAR's channel count)."""
    x = F.pad(images.to(dtype) / 255.0, (2, 2, 2, 2))  # (B, 32, 32)
    x = (x - FASHION_MEAN) / FASHION_STD
    return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()  # (B, 3, 32, 32)


def cifar_pixels(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B, 32, 32, 3) -> per-channel normalised (B, 3, 32, 32)."""
    x = images.to(dtype).permute(0, 3, 1, 2) / 255.0  # (B, 3, 32, 32)
    mean = torch.tensor(CIFAR_MEAN, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, dtype=dtype).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def _collate(batch: Mapping[str, torch.Tensor], *, cifar: bool,
             dtype: torch.dtype) -> dict[str, torch.Tensor]:
    pixels = (cifar_pixels if cifar else fashion_pixels)(batch["pixels"], dtype)
    return {"pixel_values": pixels, "labels": batch["labels"]}

