"""GPU-hour estimates of a sweep's trials from a per-step cost model (an estimate, never a measurement).

The model: a training step costs FLOPS_PER_EXAMPLE x batch FLOPs; a measurement point costs
MEASURE_STEPS training steps (measured on CPU at the tiny size by benchmarks/bench_cost.py with the
measurement batch as large as the training batch, then scaled by the measurement batch over the
training batch: `measure.batch_size` for sharpness, the test batch for smoothness); the GPU delivers
GPU_FLOPS. So a sharpness trial costs (steps + points x MEASURE_STEPS x measure.batch_size/batch)
x FLOPS_PER_EXAMPLE x batch / GPU_FLOPS seconds.
Data loading, tokenizing, evaluation and Ray's start-up are left out: add some margin.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.config import SweepConfig, Trial, block_trials

# Assumed sustained training throughput of one GPU: cluster.yaml's g5.2xlarge has one A10G
# (31.2 TFLOP/s fp32 peak); 30% of peak is typical for fp32 training of models of this size.
GPU_PEAK_FLOPS = 31.2e12
GPU_UTILIZATION = 0.30
GPU_FLOPS = GPU_PEAK_FLOPS * GPU_UTILIZATION
GPU_NAME = "one A10G (31.2 TFLOP/s fp32 peak) at 30% utilization"

# Parameters per (workload, size): tiny and small counted on the built models (this repository's
# local tokenizers), paper from the published checkpoints (t5-small, gpt-neo-125M,
# bert-base-uncased) and ResNet-152 with a ten-class head.
PARAMETERS: Mapping[tuple[str, str], float] = {
    ("causal_lm", "tiny"): 0.137e6, ("causal_lm", "small"): 5.29e6, ("causal_lm", "paper"): 125.2e6,
    ("translation", "tiny"): 0.198e6, ("translation", "small"): 9.39e6, ("translation", "paper"): 60.5e6,
    ("classification", "tiny"): 0.141e6, ("classification", "small"): 5.34e6, ("classification", "paper"): 109.5e6,
    ("image", "tiny"): 0.080e6, ("image", "small"): 1.23e6, ("image", "paper"): 58.2e6,
}
# The paper's ResNet-152 needs 11.5 GMAC a 224x224 image; CIFAR's 32x32 is (32/224)^2 of that.
RESNET152_CIFAR_MACS = 11.5e9 * (32 / 224) ** 2
# A measurement point in training steps: its extra seconds over one training step, measured with the
# measurement batch as large as the training batch, at the tiny size with the default probes,
# landscape step search and histogram, on this project's 2-core CPU machine
# (benchmarks/bench_cost.py --steps 20 --repeats 2, 2026-11-29, after the step search and the
# training-set measurement batch; the earlier figures, 22-85, predate both). The smoothness point
# (gn_samples one-example gradients and a small SVD) is near one step.
MEASURE_STEPS: Mapping[tuple[str, str], float] = {
    ("causal_lm", "sharpness"): 96.2, ("translation", "sharpness"): 216.0, ("image", "sharpness"): 146.0,
    ("classification", "sharpness"): 71.1, ("classification", "smoothness"): 1.7,
}
DEFAULT_MEASURE_STEPS = 96.2


def flops_per_example(workload: Mapping[str, Any]) -> float:
    """Training FLOPs (forward + backward) of one example: 6 x parameters x tokens for the transformers
    (the usual estimate), 3 x 2 x MACs for the ResNet (the paper size's published MACs; other sizes:
    parameters x 64 positions, the 8x8 map after the stem)."""
    name, size = workload["name"], workload["size"]
    params = PARAMETERS.get((name, size), PARAMETERS[(name, "paper")])
    if name == "image":
        macs = RESNET152_CIFAR_MACS if size == "paper" else params * 64
        return 6.0 * macs
    return 6.0 * params * workload["seq_len"]


@dataclass(frozen=True)
class TrialCost:
    steps: int
    points: int  # measurement points
    gpu_hours: float


def trial_cost(trial: Trial) -> TrialCost:
    workload = trial.workload
    points = len(trial.measure.steps(trial.steps)) if trial.experiment != "convergence" else 0
    ratio = MEASURE_STEPS.get((workload["name"], trial.experiment), DEFAULT_MEASURE_STEPS)
    step_flops = flops_per_example(workload) * workload["batch_size"]
    examples = trial.measure.batch_size if trial.experiment == "sharpness" else workload["test_batch_size"]
    measured = points * ratio * examples / workload["batch_size"]
    evals = trial.steps // trial.eval_every if trial.eval_every else 0  # a test batch forward: a third of a step
    evals_steps = evals * workload["test_batch_size"] / workload["batch_size"] / 3
    seconds = (trial.steps + measured + evals_steps) * step_flops / GPU_FLOPS
    return TrialCost(trial.steps, points, seconds / 3600)


def plan_lines(config: SweepConfig) -> list[str]:
    """The `plan` command's output: trials and estimated GPU-hours per block and in total."""
    lines, total, count = [], 0.0, 0
    for i, block in enumerate(config.experiments):
        trials = block_trials(config, block)
        costs = [trial_cost(t) for t in trials]
        hours = sum(c.gpu_hours for c in costs)
        total, count = total + hours, count + len(trials)
        w = trials[0].workload
        lines.append(f"experiments.{i} {block.experiment} {w['name']}/{w['size']} (batch {w['batch_size']}): "
                     f"{len(trials)} trials x {block.steps} steps, {costs[0].points} measurement points; "
                     f"~{hours:.1f} GPU-hours")
    lines.append(f"{config.name}: {count} trials, ~{total:.1f} GPU-hours in all (an estimate: per-step FLOPs "
                 f"x steps on {GPU_NAME}, measurement points from CPU-measured step ratios; pipeline/cost.py)")
    return lines
