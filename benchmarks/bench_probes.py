"""Cost of one ProbeBank.step (the paper's twelve probes) relative to one forward+backward.

A ~1M-parameter GPT-Neo (GPTNeoConfig: vocab 2048, hidden 128, 4 layers alternating global and
local attention, window 64, eager attention; built from the config, nothing downloaded) on a
random token batch of 32 x 128. Each repeat times a forward+backward and then the bank step on
its gradients, back to back; prints the medians and their ratio (target <= 0.5). Compare within
one run only (the machine is shared). Usage:

    .venv/bin/python benchmarks/bench_probes.py [--device cpu|cuda] [--repeats 7] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from pipeline.optim import DEFAULT_PROBES, ProbeBank


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = GPTNeoConfig(vocab_size=2048, hidden_size=128, num_layers=4, num_heads=4,
                          attention_types=[[["global", "local"], 2]], window_size=64,
                          max_position_embeddings=128, attn_implementation="eager",
                          bos_token_id=0, eos_token_id=0)
    model = GPTNeoForCausalLM(config).to(args.device)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    n_params = sum(p.numel() for p in params.values())
    batch = torch.randint(0, config.vocab_size, (32, 128), device=args.device)
    bank = ProbeBank({n: p.detach() for n, p in params.items()}, DEFAULT_PROBES)
    print(f"GPT-Neo {n_params / 1e6:.2f}M parameters in {len(params)} tensors, batch 32 x 128, "
          f"{len(DEFAULT_PROBES)} probes, device {args.device}, torch threads {torch.get_num_threads()}")

    fwd_bwd, bank_step = [], []
    for i in range(args.warmup + args.repeats):
        sync(args.device)
        start = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        grads = torch.autograd.grad(loss, list(params.values()))
        sync(args.device)
        middle = time.perf_counter()
        bank.step(dict(zip(params, grads)), {n: p.detach() for n, p in params.items()})
        sync(args.device)
        end = time.perf_counter()
        if i >= args.warmup:
            fwd_bwd.append(middle - start)
            bank_step.append(end - middle)
    f, b = statistics.median(fwd_bwd), statistics.median(bank_step)
    print(f"forward+backward median {f * 1e3:8.1f} ms   (runs: {', '.join(f'{t * 1e3:.0f}' for t in fwd_bwd)})")
    print(f"ProbeBank.step   median {b * 1e3:8.1f} ms   (runs: {', '.join(f'{t * 1e3:.0f}' for t in bank_step)})")
    print(f"ratio bank step / forward+backward = {b / f:.2f}   (target <= 0.5)")


if __name__ == "__main__":
    main()
