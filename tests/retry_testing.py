"""The retry tests' shared sweep (tests/test_retry.py on a local Ray, tests/cluster/test_retry_two_nodes.py
across two nodes): two seeds of a tiny causal LM, one trial at a time, a checkpoint every 20 steps,
two retries; seed 0 is the trial whose worker gets killed."""

from __future__ import annotations

from pathlib import Path

import torch

STEPS = 150  # at most tracking.MAX_POINTS_PER_METRIC: MLflow gets every step's metrics
VICTIM = "convergence-causal_lm-adam-lr0.001-seed0"


def retry_config(extra: str = "") -> str:
    """The sweep's YAML; `extra`: top-level lines added (e.g. where its trials must run)."""
    return f"""
name: retry
device: cpu
ray: {{max_concurrent_trials: 1}}
{extra}
retry: {{max_failures: 2, checkpoint_every: 20}}
experiments:
  - experiment: convergence
    workload: {{name: causal_lm, size: tiny, batch_size: 4, seq_len: 32}}
    steps: {STEPS}
    seeds: [0, 1]
    algorithms:
      adam: {{lr: 0.001}}
"""


def checkpoint_step(path: Path) -> int:
    """The step of the checkpoint at `path`; 0 while there is none (atomic writes: never partial)."""
    try:
        return int(torch.load(path, weights_only=True)["step"])
    except Exception:
        return 0
