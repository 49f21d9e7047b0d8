"""Measured per-step costs behind `python -m pipeline plan`'s GPU-hour estimate (pipeline.cost).

For each workload at the tiny size, on this machine's CPU: the seconds of a training step (a
convergence trial of --steps steps, no evaluation) and the extra seconds of one measurement point
(a sharpness trial, or smoothness for the classifier, of the same steps measuring once at step 0,
with the experiment's default settings but a measurement batch as large as the training batch:
pipeline.cost scales by the configured one), each the fastest of --repeats runs. Printed: both times and
their ratio, the measurement point in training-step equivalents (pipeline.cost.MEASURE_STEPS).
Usage:

    .venv/bin/python benchmarks/bench_cost.py [--steps 20] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from pipeline.config import validate  # noqa: E402
from pipeline.experiments import EXPERIMENTS  # noqa: E402

CASES = [("causal_lm", "sharpness"), ("translation", "sharpness"), ("image", "sharpness"),
         ("classification", "sharpness"), ("classification", "smoothness")]


def seconds(workload: str, experiment: str, steps: int, at: list[int] | None, repeats: int) -> float:
    block = {"experiment": experiment, "workload": {"name": workload, "size": "tiny"}, "steps": steps,
             "algorithms": {"sgd" if experiment != "smoothness" else "adam": {"lr": 1e-3}}}
    trial = validate({"name": "bench", "device": "cpu", "experiments": [block]}).trials[0]
    if at is not None:  # measured on as many examples as a training step: the cost model scales it
        block["measure"] = {"at": at, "batch_size": trial.workload["batch_size"]}
        trial = validate({"name": "bench", "device": "cpu", "experiments": [block]}).trials[0]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        EXPERIMENTS[trial.experiment](trial, lambda step, metrics: None)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("workload        experiment   train step s   measurement s   measurement / step")
    for workload, experiment in CASES:
        base = seconds(workload, "convergence", args.steps, None, args.repeats)
        measured = seconds(workload, experiment, args.steps, [0], args.repeats)
        step = base / args.steps
        extra = max(measured - base, 0.0)
        print(f"{workload:15s} {experiment:12s} {step:12.4f}   {extra:13.3f}   {extra / step:18.1f}", flush=True)


if __name__ == "__main__":
    main()
