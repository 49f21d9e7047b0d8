"""Cost of directional_sharpness for twelve directions vs. a gradient and vs. the authors' method.

Model: a ~1M-parameter GPT-Neo (vocab 2048, hidden 128, 4 layers, alternating global/local
attention, window 64, eager attention) on a batch of 32 x 128 random tokens. Per repeat, in
interleaved order: one forward+backward (the gradient), directional_sharpness over all twelve
directions at once, and the authors' method (torch.autograd.functional.vhp, one direction at a
time). Printed: gradient-equivalents per direction = sharpness time / 12 / gradient time, and
the speed-up = authors' time / sharpness time, each the median of the per-repeat ratios (the
machine is shared: compare only within one run; the gradient time of a repeat is the fastest
of three). The chunk size is directional_sharpness's own choice unless --chunk-size is given.
Usage:

    .venv/bin/python benchmarks/bench_sharpness.py [--device cpu|cuda] [--batch 32]
        [--seq-len 128] [--directions 12] [--repeats 3] [--threads N]
        [--method auto|forward_over_reverse|double_backward] [--chunk-size N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call
from transformers import GPTNeoConfig, GPTNeoForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from pipeline.measure import directional_sharpness  # noqa: E402
from timing import timed  # noqa: E402  (benchmarks/timing.py, beside this script)
from pipeline.measure.chunking import default_chunk_size  # noqa: E402
from pipeline.measure.hvp import resolve_method  # noqa: E402


def build(device: str, batch: int, seq_len: int, count: int):
    torch.manual_seed(0)
    config = GPTNeoConfig(
        vocab_size=2048, hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512,
        attention_types=[[["global", "local"], 2]], window_size=64,
        max_position_embeddings=max(seq_len, 128), bos_token_id=0, eos_token_id=0,
        use_cache=False, attn_implementation="eager",  # fused SDPA has no second derivatives
    )
    model = GPTNeoForCausalLM(config).to(device).eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    ids = torch.randint(0, config.vocab_size, (batch, seq_len), device=device)

    def loss_fn(p):
        logits = functional_call(model, p, (ids,)).logits  # (B, T, V)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    gen = torch.Generator(device=device).manual_seed(1)
    directions = {
        f"d{k}": {n: torch.randn(p.shape, generator=gen, device=device) for n, p in params.items()}
        for k in range(count)
    }
    return params, loss_fn, directions


def gradient(loss_fn, params):
    live = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    return torch.autograd.grad(loss_fn(live), list(live.values()))


def authors_method(loss_fn, params, directions):
    """The paper's code: torch.autograd.functional.vhp per direction, then v.Hv / ||v||^2."""
    names = list(params)

    def flat_loss(*tensors):
        return loss_fn(dict(zip(names, tensors)))

    out = {}
    for label, v in directions.items():
        vs = tuple(v[n] for n in names)
        _, hv = torch.autograd.functional.vhp(flat_loss, tuple(params[n] for n in names), vs)
        vhv = sum((h * t).sum() for h, t in zip(hv, vs))
        out[label] = float(vhv / sum(t.pow(2).sum() for t in vs))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--directions", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", default="auto",
                        choices=["auto", "forward_over_reverse", "double_backward"])
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params, loss_fn, directions = build(args.device, args.batch, args.seq_len, args.directions)
    count = len(directions)
    method = resolve_method(args.method, params)
    chunk = args.chunk_size or default_chunk_size(loss_fn, params, count)
    print(f"device={args.device} threads={torch.get_num_threads()} "
          f"params={sum(p.numel() for p in params.values())} batch={args.batch}x{args.seq_len} "
          f"directions={count} method={method}"
          + (f" chunk_size={chunk or count}{'' if args.chunk_size else ' (automatic)'}"
             if method == "forward_over_reverse" else ""))

    def ours():
        return directional_sharpness(loss_fn, params, directions, method=method,
                                     chunk_size=args.chunk_size)

    # Warm-up (first-call costs of torch.func and the allocator), and the agreement check.
    gradient(loss_fn, params)
    first = ours()
    reference = authors_method(loss_fn, params, dict(list(directions.items())[:2]))
    worst = max(abs(first[k] - reference[k]) / abs(reference[k]) for k in reference)
    print(f"agreement with vhp (2 directions): max relative difference {worst:.2e}")
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    per_direction, speedup, rows = [], [], []
    for repeat in range(args.repeats):
        # The fastest of three gradients: a conservative (small) unit on a shared machine.
        t_grad = min(timed(lambda: gradient(loss_fn, params), args.device)[0] for _ in range(3))
        t_ours, _ = timed(ours, args.device)
        t_authors, _ = timed(lambda: authors_method(loss_fn, params, directions), args.device)
        per_direction.append(t_ours / count / t_grad)
        speedup.append(t_authors / t_ours)
        rows.append((t_grad, t_ours, t_authors))
        print(f"repeat {repeat}: gradient {t_grad:.3f}s  sharpness x{count} {t_ours:.3f}s  "
              f"vhp x{count} {t_authors:.3f}s")
    if args.device == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    med = [statistics.median(col) for col in zip(*rows)]
    print(f"median seconds: gradient {med[0]:.3f}  sharpness {med[1]:.3f}  vhp {med[2]:.3f}")
    ratio = statistics.median(per_direction)
    print(f"gradient-equivalents per direction: {ratio:.2f} (target <= 1.5)")
    print(f"speed-up vs vhp one at a time:      {statistics.median(speedup):.2f}x (target >= 3)")


if __name__ == "__main__":
    main()
