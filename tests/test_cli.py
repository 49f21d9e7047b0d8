"""The command line on bad input: exit 2, one `error: ...` line naming the key or file, before Ray."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import sweep
from pipeline.__main__ import main
from pipeline.config import load_config
from pipeline.optim import ALGORITHMS
from pipeline.workloads import WORKLOADS

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "conf" / "smoke.yaml"


@pytest.fixture
def earlier(tmp_path):
    """A results directory that earlier sweeps wrote, and a way to see that nothing touched it."""
    results = tmp_path / "results"
    for rel, text in {"smoke/trials/old-trial/records/convergence.parquet": "rows",
                      "smoke/tables/convergence.parquet": "table", "smoke/report.md": "# report",
                      "other/trials/x/trial.json": "{}"}.items():
        (results / rel).parent.mkdir(parents=True, exist_ok=True)
        (results / rel).write_text(text)

    def snapshot() -> dict[str, tuple[str, int]]:
        return {str(p.relative_to(results)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                              p.stat().st_mtime_ns)
                for p in sorted(results.rglob("*"))}

    return results, snapshot


@pytest.fixture
def no_ray(monkeypatch):
    """Bad input must be refused before the sweep starts Ray: reaching sweep.run is a failure."""
    def refuse(*args, **kwargs):
        raise AssertionError("sweep.run reached: Ray would start")

    monkeypatch.setattr(sweep, "run", refuse)


def one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BAD_INPUT = {
    "missing config file": (lambda tmp: ["nope/missing.yaml"], "error: nope/missing.yaml: no such config file"),
    "malformed yaml": (lambda tmp: [write(tmp, "bad.yaml", "name: x\nexperiments:\n  - steps: 3\n   seeds: [0]\n")],
                       "bad.yaml: malformed YAML at line 4"),
    "unknown key": (lambda tmp: [str(SMOKE), "experiments.0.measure.lanczos=3"],
                    "error: experiments.0.measure.lanczos: unknown key"),
    "unknown algorithm": (lambda tmp: [str(SMOKE), "experiments.1.algorithms.adamw.lr=0.1"],
                          "error: experiments.1.algorithms.adamw: unknown algorithm 'adamw'; allowed: "
                          + ", ".join(ALGORITHMS)),
    "unknown workload": (lambda tmp: [str(SMOKE), "experiments.0.workload.name=gpt2"],
                         "error: experiments.0.workload.name: unknown workload 'gpt2'; allowed: "
                         + ", ".join(WORKLOADS)),
    "clip fraction above 1": (lambda tmp: [str(SMOKE), "experiments.1.algorithms.sgd.clip_fraction=[0.1, 2]"],
                              "error: experiments.1.algorithms.sgd.clip_fraction.1: "),
    "negative clip fraction": (lambda tmp: [str(SMOKE), "experiments.1.algorithms.sgd.clip_fraction=-0.5"],
                               "error: experiments.1.algorithms.sgd.clip_fraction.0: "),
    "lr zero": (lambda tmp: [str(SMOKE), "experiments.1.algorithms.adam.lr=0"],
                "error: experiments.1.algorithms.adam.lr.0: "),
    "lr negative": (lambda tmp: [str(SMOKE), "experiments.0.algorithms.sgd.lr=-0.1"],
                    "error: experiments.0.algorithms.sgd.lr.0: "),
    "empty grid": (lambda tmp: [str(SMOKE), "experiments=[]"],
                   "error: experiments: empty list, so the grid has no trials"),
    "empty seeds": (lambda tmp: [str(SMOKE), "experiments.1.seeds=[]"], "error: experiments.1.seeds: empty list"),
    "results dir under a file": (lambda tmp: [str(SMOKE), f"results_dir={write(tmp, 'afile', 'x')}/results"],
                                 "error: results_dir: cannot create "),
    "bad override": (lambda tmp: [str(SMOKE), "experiments.9.steps=1"], "error: override 'experiments.9.steps=1': "),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_line_before_ray(case, tmp_path, capsys, earlier, no_ray, monkeypatch):
    results, snapshot = earlier
    before = snapshot()
    monkeypatch.chdir(tmp_path)
    args, needle = BAD_INPUT[case]
    argv = args(tmp_path)
    if argv[0] == str(SMOKE) and not any(a.startswith("results_dir=") for a in argv):
        argv.append(f"results_dir={results}")
    assert main(["sweep", *argv]) == 2
    line = one_error_line(capsys)
    assert needle in line, line
    assert snapshot() == before
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_an_unwritable_results_directory_is_refused(tmp_path, capsys, no_ray):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["sweep", str(SMOKE), f"results_dir={locked}"]) == 2
    finally:
        locked.chmod(0o755)
    assert "is not writable" in one_error_line(capsys)


def test_an_earlier_sweep_with_another_config_is_left_alone(tmp_path, capsys, earlier, no_ray):
    results, snapshot = earlier
    trial = load_config(SMOKE, [f"results_dir={results}"]).trials[0]
    done = results / "smoke" / "trials" / trial.trial_id / "trial.json"
    done.parent.mkdir(parents=True)
    done.write_text(json.dumps({**trial.to_json(), "steps": 99}))
    before = snapshot()
    assert main(["sweep", str(SMOKE), f"results_dir={results}"]) == 2
    line = one_error_line(capsys)
    assert f"already holds trial {trial.trial_id} with a different config" in line
    assert snapshot() == before


@pytest.mark.parametrize("argv, needle", [
    ([], "usage: python -m pipeline"),
    (["sweep"], "error: sweep: expected a config file"),
    (["plan"], "error: plan: expected a config file"),
    (["train", "x"], "error: unknown command 'train'; allowed: sweep, aggregate, sync-mlflow, setup"),
    (["sync-mlflow"], "error: expected exactly one argument RESULTS_DIR"),
    (["sync-mlflow", "no/such/dir"], "error: RESULTS_DIR: no/such/dir does not exist"),
    (["sync-mlflow", "x", "--tracking-uri"], "error: --tracking-uri: expected a URI"),
    (["aggregate", "no/such/dir"], "error: RESULTS_DIR: no/such/dir does not exist"),
    (["setup", "--only", "nothing"], "error: "),
])
def test_commands_and_their_delegates_refuse_bad_arguments(argv, needle, capsys):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert needle in err and "Traceback" not in err


def test_the_real_command_exits_2_without_starting_ray(tmp_path):
    ray_dir = tmp_path / "ray"
    env = {**os.environ, "RAY_TMPDIR": str(ray_dir),
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "pipeline", "sweep", str(SMOKE), "experiments.0.algorithms.sgd.lr=-1"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: experiments.0.algorithms.sgd.lr.0: Input should be greater than 0 (got -1)"]
    assert done.stdout == "" and not ray_dir.exists() and not (tmp_path / "mlflow.db").exists()


def test_the_cluster_job_joins_the_running_ray_unless_told_otherwise(monkeypatch):
    import runpy

    import pipeline.__main__ as cli

    seen = []
    monkeypatch.setattr(cli, "main", lambda argv: seen.append(argv) or 0)
    monkeypatch.setattr(sys, "argv", ["jobs/sweep.py", "conf/paper.yaml", "ray.max_concurrent_trials=4"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(ROOT / "jobs" / "sweep.py"), run_name="__main__")
    assert info.value.code == 0
    paper = str((ROOT / "conf" / "paper.yaml").resolve())  # an existing config: made absolute for the job
    assert seen == [["sweep", paper, "ray.address=auto", "ray.max_concurrent_trials=4"]]
    assert load_config(SMOKE, ["ray.address=auto"]).ray.address == "auto"
    assert load_config(SMOKE, ["ray.address=auto", "ray.address=null"]).ray.address is None  # later wins


@pytest.mark.parametrize("flag", [[], ["--verbose"]])
def test_verbose_is_a_flag_anywhere_after_sweep(tmp_path, monkeypatch, capsys, flag):
    seen = {}

    def record(plan, **kwargs):  # stands in for Ray: what the CLI asked for, then no trial ran
        seen.update(kwargs, trials=len(plan.trials))
        return sweep.SweepOutcome()

    monkeypatch.setattr(sweep, "run", record)
    args = ["sweep", str(SMOKE), *flag, f"results_dir={tmp_path}", f"tracking_uri=sqlite:///{tmp_path}/m.db"]
    assert main(args) == 1  # no records to aggregate
    assert seen["verbose"] is bool(flag) and seen["trials"] == 8
    assert "aggregate:" in capsys.readouterr().err
