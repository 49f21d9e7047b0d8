"""The paper-scale configs (conf/paper/*.yaml) and the `plan` dry run: each loads, follows the paper's
setups, and `python -m pipeline plan` prints its trial count and GPU-hour estimate without Ray or data."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.cost import GPU_FLOPS, flops_per_example, trial_cost

ROOT = Path(__file__).resolve().parents[1]
PAPER = sorted((ROOT / "conf" / "paper").glob("*.yaml"))
# Training set sizes behind the epochs: App. B.1's translation subset, CIFAR-10's training split,
# IMDB's training split; the causal LM's epoch is the config's stated assumption (10 steps).
STEPS_PER_EPOCH = {"translation": 10240 // 1024, "image": 50000 // 1000, "classification": 25000 // 25,
                   "causal_lm": 10}
BATCH = {"translation": 1024, "causal_lm": 1000, "image": 1000, "classification": 25}  # Table 2, App. D/E
EPOCHS = {"sharpness": (2, 5, 10, 20), "smoothness": (0, 1, 2, 7, 8, 9)}  # Tables 1/4-7/9, Table 8


def plan(config: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    empty = tmp_path / "no-data"
    empty.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(tmp_path / "ray-tmp"),
           "PIPELINE_DATA_DIR": str(empty)}  # no corpora: the plan must not need them
    return subprocess.run([sys.executable, "-m", "pipeline", "plan", str(config)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_there_is_a_paper_config_per_setup():
    assert {p.stem for p in PAPER} == {"translation", "causal_lm", "image", "smoothness"}


@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_a_paper_config_follows_the_paper(path):
    config = load_config(path)
    for block in config.experiments:
        trial = next(t for t in config.trials if t.experiment == block.experiment)
        w = trial.workload
        assert block.seeds == [0, 1, 2]
        assert w["source"] == "hub" and w["size"] == "paper"
        assert w["batch_size"] == BATCH[w["name"]]
        if block.experiment in EPOCHS:  # the middle minibatch of the tables' epochs
            per = STEPS_PER_EPOCH[w["name"]]
            assert block.measure.at == [e * per + per // 2 for e in EPOCHS[block.experiment]]
            assert block.steps >= block.measure.at[-1]


def test_table_3_and_the_appendices_learning_rates():
    lrs = {}
    for name in ("translation", "causal_lm"):
        for trial in load_config(ROOT / "conf" / "paper" / f"{name}.yaml").trials:
            if trial.experiment == "convergence":
                lrs[(name, trial.trajectory)] = trial.lr
    assert lrs[("translation", "adafactor")] is None  # relative step
    assert lrs[("translation", "adafactor_clip0.5")] == 3e-2  # a fixed lr with clipping
    assert lrs[("translation", "sgd_clip0.1")] == lrs[("translation", "sgd")] == 1e-3
    assert lrs[("causal_lm", "adam_clip0.5")] == 1.5e-4 and lrs[("causal_lm", "adafactor_clip0.5")] == 5e-3
    assert len([k for k in lrs if k[0] == "translation"]) == 10 and len([k for k in lrs if k[0] == "causal_lm"]) == 6
    image = load_config(ROOT / "conf" / "paper" / "image.yaml").trials[0]
    clipped = {p.algorithm: p.clip_fraction for p in image.measure.probes if p.clip_fraction}
    assert clipped == {"sgd": 0.1, "adam": 0.1, "adafactor": 0.1, "normalized_sgd": 0.1}  # App. E
    bert = load_config(ROOT / "conf" / "paper" / "smoothness.yaml").trials[0]
    assert (bert.algorithm, bert.lr, bert.workload["pretrained"]) == ("adam", 1e-4, True)  # App. D.1


@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_plan_prints_trials_and_gpu_hours_without_ray_or_data(path, tmp_path):
    done = plan(path, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    config = load_config(path)
    total = sum(trial_cost(t).gpu_hours for t in config.trials)
    last = done.stdout.strip().splitlines()[-1]
    match = re.search(r": (\d+) trials, ~([\d.]+) GPU-hours in all \(an estimate", last)
    assert match, done.stdout
    assert int(match[1]) == len(config.trials) and float(match[2]) == pytest.approx(total, abs=0.06)
    assert not (tmp_path / "ray-tmp").exists() and not (tmp_path / "mlflow.db").exists()
    # The figure the config's comments state is the model's, to two significant figures.
    stated = float(re.search(r"Expected cost: ~([\d.]+) GPU-hours", path.read_text())[1])
    assert stated == pytest.approx(total, rel=0.1), (stated, total)


def test_the_cost_model_scales_with_the_work():
    """Independent arithmetic: a translation step at the paper size is 6 x 60.5M parameters x 128
    tokens x 1024 examples FLOPs; 210 steps of it on the assumed GPU."""
    trial = next(t for t in load_config(ROOT / "conf" / "paper" / "translation.yaml").trials
                 if t.experiment == "convergence")
    step = 6 * 60.5e6 * 128 * 1024
    assert flops_per_example(trial.workload) * 1024 == pytest.approx(step)
    evals = (210 // 10) / 3  # a test-batch forward every 10 steps
    assert trial_cost(trial).gpu_hours == pytest.approx((210 + evals) * step / GPU_FLOPS / 3600)
