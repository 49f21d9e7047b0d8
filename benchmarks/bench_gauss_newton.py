"""Peak memory and cost of gauss_newton_smoothness as the sample count grows, bounded vs. unbounded rows.

Each configuration runs in a fresh subprocess so that its peak memory (ru_maxrss on CPU,
torch.cuda.max_memory_allocated on CUDA) is its own. Compare within one run only: the machine
is shared. Usage:

    .venv/bin/python benchmarks/bench_gauss_newton.py [--device cpu|cuda] [--size small|base]
        [--samples 4 16 32] [--seq-len 64] [--budget-rows 2] [--bounded-only]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

SIZES = {  # BertConfig overrides; "base" is bert-base-uncased (110M parameters)
    "small": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def measure(device: str, size: str, samples: int, seq_len: int, budget_rows: int | None) -> dict:
    """One configuration, in this process: returns its figures and peak memory."""
    import resource

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from pipeline.measure.gauss_newton import gauss_newton_smoothness

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, num_labels=2, attn_implementation="eager", **SIZES[size])
    model = BertForSequenceClassification(config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(1000, 30000, (samples, seq_len), device=device)
    mask = torch.ones_like(ids)
    mask[samples // 2 :, seq_len // 2 :] = 0  # half the samples padded, as in a real batch
    batch = {"input_ids": ids, "attention_mask": mask}
    budget = (samples if budget_rows is None else budget_rows) * n_params * 4
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (ru_maxrss is KiB)
    start = time.perf_counter()
    result = gauss_newton_smoothness(model, batch, outlier_factor=4.0, params="all", row_budget_bytes=budget)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 - base_rss
    return {
        "samples": samples,
        "budget_rows": budget_rows if budget_rows is not None else "all",
        "n_params": n_params,
        "row_GiB": n_params * 4 / 2**30,
        "peak_GiB": peak,
        "seconds": time.perf_counter() - start,
        **{k: result[k] for k in ("L", "ell", "ratio", "fraction_removed", "rows_held", "row_evaluations")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--samples", type=int, nargs="+", default=[4, 16, 32])
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--budget-rows", type=int, default=2, help="rows held in the bounded runs")
    parser.add_argument("--bounded-only", action="store_true", help="skip the runs that hold every row")
    parser.add_argument("--only", type=str, default=None, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.only is not None:
        samples, budget = json.loads(args.only)
        print(json.dumps(measure(args.device, args.size, samples, args.seq_len, budget)))
        return
    rows = []
    for samples in args.samples:
        for budget in (args.budget_rows,) if args.bounded_only else (args.budget_rows, None):
            child = [sys.executable, __file__, "--device", args.device, "--size", args.size, "--seq-len",
                     str(args.seq_len), "--only", json.dumps([samples, budget])]
            out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'n':>4} {'rows held':>9} {'row evals':>9} {'peak GiB':>9} {'s':>7} "
          f"{'L':>10} {'ell':>10} {'ratio':>8} {'eps':>8}")
    for r in rows:
        print(f"{r['samples']:>4} {r['rows_held']:>9} {r['row_evaluations']:>9} {r['peak_GiB']:>9.3f} "
              f"{r['seconds']:>7.1f} {r['L']:>10.4g} {r['ell']:>10.4g} {r['ratio']:>8.3g} "
              f"{r['fraction_removed']:>8.2e}")


if __name__ == "__main__":
    main()
