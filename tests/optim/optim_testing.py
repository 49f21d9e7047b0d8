"""Shared pieces for the optimizer tests (a helper module, not a test file): a tiny model with 1-D, 2-D
and 3-D parameters."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import torch
from torch import nn


class TinyNet(nn.Module):
    """An MLP plus a 3-D parameter, so that Adafactor's factored path sees > 2 dims too."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)
        self.mix = nn.Parameter(torch.randn(2, 3, 4) * 0.3)  # (2, 3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc1(x))  # (B, 8)
        out = self.fc2(h)  # (B, 3)
        return out + torch.einsum("bi,kij->bj", out, self.mix).sum(-1, keepdim=True)  # (B, 3)


def batches(seed: int, dtype: torch.dtype) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(16, 6, generator=gen, dtype=dtype), torch.randn(16, 3, generator=gen, dtype=dtype)


def loss_of(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def make_net(dtype: torch.dtype = torch.float64, seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet().to(dtype)


def run_pair(model: nn.Module, ours: Callable, reference: Callable, steps: int, dtype: torch.dtype) \
        -> list[float]:
    """Trains two copies with the same data; returns the max |param difference| after each step."""
    other = copy.deepcopy(model)
    opt_a, opt_b = ours(model.parameters()), reference(other.parameters())
    data = batches(1, dtype)
    gaps = []
    for _ in range(steps):
        batch = next(data)
        for m, opt in ((model, opt_a), (other, opt_b)):
            opt.zero_grad(set_to_none=True)
            loss_of(m, batch).backward()
            opt.step()
        gaps.append(max(float((a.detach() - b.detach()).abs().max())
                        for a, b in zip(model.parameters(), other.parameters())))
    return gaps


def sort_clip(tensors: list[torch.Tensor], fraction: float) -> list[torch.Tensor]:
    """Reference clip, the paper's recipe in float64: sort |x| descending, tau = sorted[c]."""
    flat = torch.cat([t.detach().double().flatten() for t in tensors])
    c = int(fraction * flat.numel() + 1e-6)
    if c == 0:
        return [t.detach().double().clone() for t in tensors]
    desc = flat.abs().sort(descending=True).values
    tau = desc[c] if c < flat.numel() else flat.abs()[flat != 0].min()
    return [torch.sign(t.double()) * torch.minimum(t.double().abs(), tau) for t in tensors]
