"""Overhead of the sweep machinery: Ray Tune + MLflow + records vs a plain loop over the same trials.

    python benchmarks/bench_sweep.py                      # conf/quick_causal_lm.yaml, 3 repeats
    python benchmarks/bench_sweep.py --smoke --repeats 2  # conf/smoke.yaml
    python benchmarks/bench_sweep.py --config conf/x.yaml experiments.0.steps=20

Per repeat, alternating: (1) a sequential loop that calls the experiment functions directly (no
Ray, no MLflow, no records), with torch on the trial's own thread count (`--loop-threads` adds
others, e.g. every core: the fastest loop is the baseline; on our busy 2-core machines the tiny
models ran ~10x slower on 2 threads than on 1); (2) the real sweep (`pipeline.sweep.run`:
Ray start, Tune trials sharing the same cores, MLflow child runs, Parquet records) into a fresh
results directory and MLflow store. The store's one-time schema creation is done, and reported,
before the sweep's clock starts; the aggregate stage and the report, which the sweep command runs
after the sweep, are timed apart. Reports medians: sweep wall /
loop wall (target <= 1.10) and MLflow time as a fraction of trial time (target <= 2%).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import sweep, tracking  # noqa: E402
from pipeline.aggregate import aggregate  # noqa: E402
from pipeline.config import Trial, load_config  # noqa: E402
from pipeline.experiments import EXPERIMENTS  # noqa: E402
from pipeline.report import write_report  # noqa: E402
from pipeline.runner import plan_sweep  # noqa: E402


def loop_once(trials: Sequence[Trial], threads: int) -> float:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    for trial in trials:
        EXPERIMENTS[trial.experiment](trial, [])
    return time.perf_counter() - start


def sweep_once(config_path: Path, overrides: list[str], cores: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        config = load_config(config_path, [*overrides, f"results_dir={tmp}/results", f"tracking_uri={uri}",
                                           f"ray.num_cpus={cores}", "ray.address=null"])
        start = time.perf_counter()
        tracking.client(uri)  # a fresh SQLite store: MLflow builds its schema (once per store)
        store_init = time.perf_counter() - start
        plan = plan_sweep(config)
        outcome = sweep.run(plan)
        if outcome.failed:
            raise SystemExit(f"sweep failed: {outcome.failed}")
        start = time.perf_counter()
        try:  # what `python -m pipeline sweep` runs after the sweep
            write_report(plan.layout, aggregate(plan.layout))
        except ValueError as err:
            raise SystemExit(f"aggregate failed: {err}") from None
        aggregate_seconds = time.perf_counter() - start
        trial_seconds = sum(r["trial_seconds"] for r in outcome.results.values())
        tracking_seconds = sum(r["tracking_seconds"] for r in outcome.results.values())
        return {
            "wall": outcome.seconds,
            "aggregate": aggregate_seconds,
            "store_init": store_init,
            "tracking_fraction": tracking_seconds / trial_seconds,
            "metrics": sum(r["metrics_logged"] for r in outcome.results.values()),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "conf" / "quick_causal_lm.yaml")
    parser.add_argument("--smoke", action="store_true", help="use conf/smoke.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--loop-threads", type=int, nargs="+", default=[],
                        help="torch thread counts for the loop (default: the trial's CPU count)")
    parser.add_argument("overrides", nargs="*", help="key.path=value, as for the sweep command")
    args = parser.parse_args(argv)
    path = ROOT / "conf" / "smoke.yaml" if args.smoke else args.config
    trials = load_config(path, args.overrides).trials
    print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {len(trials)} trials, "
          f"{args.cores} cores, {args.repeats} repeats", flush=True)

    per_trial = max(1, int(load_config(path, args.overrides).resources_per_trial.cpu))
    thread_counts = sorted(set(args.loop_threads or [per_trial]))
    loops, sweeps = [], []
    for repeat in range(args.repeats):
        walls = {n: loop_once(trials, n) for n in thread_counts}
        loops.append(min(walls.values()))
        sweeps.append(sweep_once(path, args.overrides, args.cores))
        s = sweeps[-1]
        loop_text = ", ".join(f"{n} thread{'s' if n > 1 else ''} {w:.1f} s" for n, w in walls.items())
        print(f"  repeat {repeat}: loop ({loop_text}), sweep {s['wall']:.1f} s (+ aggregate {s['aggregate']:.1f} s), "
              f"mlflow {100 * s['tracking_fraction']:.2f}% of trial time, {s['metrics']} metrics", flush=True)

    loop, wall = statistics.median(loops), statistics.median(s["wall"] for s in sweeps)
    fraction = statistics.median(s["tracking_fraction"] for s in sweeps)
    print(f"loop wall (median):   {loop:.1f} s  (the fastest thread count of each repeat)")
    print(f"sweep wall (median):  {wall:.1f} s  (Ray start, trials, MLflow, records; aggregate excluded)")
    print(f"sweep / loop:         {wall / loop:.3f}  (target <= 1.10)")
    print(f"MLflow / trial time:  {100 * fraction:.2f}%  (target <= 2%)")
    store_init = statistics.median(s["store_init"] for s in sweeps)
    print(f"fresh MLflow store:   {store_init:.1f} s once per store, not in the sweep wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
