"""Wall-clock timing of one call for the benchmark scripts, synchronising CUDA around it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def timed(fn: Callable[[], T], device: str) -> tuple[float, T]:
    """(seconds, result) of fn(); on CUDA the queued kernels are waited for on both sides."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result
