"""Clip-threshold selection vs. the full sort of |g| the paper's code ran every step.

Gradients shaped like t5-small's 131 tensors (60.5M coordinates, shapes from a meta-device
T5ForConditionalGeneration: nothing is downloaded), heavy-tailed like real gradients. Each
repeat times, back to back on the same data: the paper's recipe (concatenate, |.|, sort
descending, take index int(n k)), our clip_threshold, torch.kthvalue on the concatenation (the
obvious alternative), and the whole coordinate_clip. Prints medians and the ratios; compare
within one run only (the machine is shared). Usage:

    .venv/bin/python benchmarks/bench_clip.py [--device cpu|cuda] [--repeats 5] [--fraction 0.1]
        [--threads N]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from transformers import T5Config, T5ForConditionalGeneration

from pipeline.optim import clip_count, clip_threshold, coordinate_clip
from timing import timed  # benchmarks/timing.py, beside this script


def t5_small_shapes() -> list[torch.Size]:
    config = T5Config(vocab_size=32128, d_model=512, d_ff=2048, num_layers=6, num_heads=8, d_kv=64)
    with torch.device("meta"):
        model = T5ForConditionalGeneration(config)
    return [p.shape for p in model.parameters()]


def fake_gradients(shapes: list[torch.Size], device: str) -> list[torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(0)
    out = []
    for shape in shapes:
        g = torch.randn(shape, generator=gen, device=device)
        out.append(g.mul_(torch.rand(shape, generator=gen, device=device).pow_(4)))  # heavy tail
    return out


def sort_threshold(grads: list[torch.Tensor], fraction: float) -> torch.Tensor:
    """The paper's landscape_utils._get_top_coordinates_threshold, minus its host copy."""
    flat = torch.cat([g.reshape(-1) for g in grads]).abs_()
    desc = flat.sort(descending=True).values
    return desc[int(flat.numel() * fraction)]


def kthvalue_threshold(grads: list[torch.Tensor], fraction: float) -> torch.Tensor:
    flat = torch.cat([g.reshape(-1) for g in grads]).abs_()
    return torch.kthvalue(flat, flat.numel() - clip_count(flat.numel(), fraction)).values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    grads = fake_gradients(t5_small_shapes(), args.device)
    n = sum(g.numel() for g in grads)
    print(f"{len(grads)} tensors, {n / 1e6:.1f}M coordinates, fraction {args.fraction}, "
          f"device {args.device}, torch threads {torch.get_num_threads()}")
    methods = {
        "sort (paper)": lambda: sort_threshold(grads, args.fraction),
        "clip_threshold": lambda: clip_threshold(grads, args.fraction),
        "kthvalue": lambda: kthvalue_threshold(grads, args.fraction),
        "coordinate_clip": lambda: coordinate_clip(grads, args.fraction),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    timed(methods["clip_threshold"], args.device)  # warm-up
    for _ in range(args.repeats):
        results = {}
        for name, fn in methods.items():  # interleaved, so that load changes hit all alike
            seconds, results[name] = timed(fn, args.device)
            times[name].append(seconds)
        assert results["clip_threshold"].item() == results["sort (paper)"].item() == results["kthvalue"].item()
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    for name, m in medians.items():
        print(f"{name:16s} median {m * 1e3:9.1f} ms   (runs: {', '.join(f'{t * 1e3:.0f}' for t in times[name])})")
    base = medians["sort (paper)"]
    print(f"ratio sort / clip_threshold  = {base / medians['clip_threshold']:.1f}x   (target >= 5x)")
    print(f"ratio sort / kthvalue        = {base / medians['kthvalue']:.1f}x")
    print(f"ratio sort / coordinate_clip = {base / medians['coordinate_clip']:.1f}x   (threshold + clamp)")


if __name__ == "__main__":
    main()
