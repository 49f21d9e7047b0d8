"""What a person sees of a real smoke sweep: its progress lines in a log (TERM=dumb, not a terminal), and its
runs in a real `mlflow server`'s UI rendered by headless Chromium (the saved view lists every trial).

One `python -m pipeline sweep conf/smoke.yaml` in a subprocess (its own local Ray, its stdout a pipe), with
Adam clipped and unclipped, as the README's walk-through compares them. PIPELINE_UPDATE_DOCS=1 also writes
the screenshot to docs/mlflow-ui.png.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from pipeline import browser, tracking_view
from pipeline.config import load_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "conf" / "smoke.yaml"
ADAM_CLIPPED = "experiments.1.algorithms.adam.clip_fraction=[0.0, 0.5]"
DOCS_SHOT = ROOT / "docs" / "mlflow-ui.png"
SWEEP_LINE = re.compile(r"sweep smoke: \d+ done, \d+ running, \d+ pending, \d+ failed; [\d:]+ elapsed, ~[\d:?]+ left")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    overrides = [f"results_dir={tmp / 'results'}", f"tracking_uri=sqlite:///{tmp / 'mlflow.db'}", ADAM_CLIPPED]
    env = {**os.environ, "TERM": "dumb", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "pipeline", "sweep", str(SMOKE), *overrides], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=1500, stdin=subprocess.DEVNULL)
    print(done.stdout)
    print(done.stderr, file=sys.stderr)
    config = load_config(SMOKE, overrides)
    return SimpleNamespace(code=done.returncode, out=done.stdout, err=done.stderr, lines=done.stdout.splitlines(),
                           config=config, trials={t.trial_id: t for t in config.trials}, tmp=tmp,
                           uri=f"sqlite:///{tmp / 'mlflow.db'}", sweep_dir=config.layout.sweep_dir)


def test_progress_has_a_line_per_trial_and_phase_and_ends_with_the_summary(smoke):
    assert smoke.code == 0, smoke.err[-3000:]
    assert len(smoke.trials) == 10 and any(t.trajectory == "adam_clip0.5" for t in smoke.trials.values())
    lines = smoke.lines
    started = [line for line in lines if line.startswith("[started ")]
    assert sorted(line.split()[-1] for line in started) == sorted(smoke.trials)
    assert [int(re.match(r"\[started (\d+)/10\]", line)[1]) for line in started] == list(range(1, 11))
    for trial_id, trial in smoke.trials.items():
        mine = [line for line in lines if line.startswith(f"  {trial_id}  ")]
        phases = [line.split()[1] for line in mine]
        assert "writing" in phases, (trial_id, mine)
        assert any(re.search(rf"step \d+/{trial.steps}", line) for line in mine)
        if trial.experiment == "sharpness":  # measured at steps 0 and 3
            assert "measuring" in phases, (trial_id, mine)
        ended = [line for line in lines if re.fullmatch(rf"\[ended \d+/10\] finished {trial_id} \(\d+ s\)", line)]
        assert len(ended) == 1
    assert any(SWEEP_LINE.fullmatch(line) for line in lines)
    assert any("starting Ray" in line for line in lines[:3])  # said before Ray's silent start-up
    # The last progress line, then only the summary: the sweep's totals and where everything is.
    summary = next(i for i, line in enumerate(lines) if re.match(r"sweep smoke: \d+ finished, ", line))
    assert SWEEP_LINE.fullmatch(lines[summary - 1])
    # records, then the accounting (the sweep's trials, one indented line per table), then where things are
    heads = [line.split(":")[0] for line in lines[summary + 1:]]
    assert heads[:2] == ["records", "trials"], heads
    per_table = [h for h in heads[2:] if h.startswith("  ")]
    assert {"  sharpness", "  convergence", "  trials"} <= set(per_table), heads
    assert heads[2 + len(per_table):] == ["tables", "figures", "report", "html", "mlflow", "runs"], heads
    # Ray's own chatter is off: no warnings, no status tables, no escape sequences.
    assert "WARNING" not in smoke.err and "network_util" not in smoke.err and "Trial status" not in smoke.out
    assert "\x1b" not in smoke.out + smoke.err


def test_the_mlflow_ui_lists_every_trial_in_the_saved_view(smoke):
    assert smoke.code == 0, smoke.err[-3000:]
    client = MlflowClient(smoke.uri)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.md", "report.html", "tables", "figures"} <= top
    if browser.find_chromium() is None:
        pytest.skip("no Chromium (Debian package `chromium`; `make test-tools` installs it)")
    shot = smoke.sweep_dir / "mlflow-ui.png"
    with browser.mlflow_ui(smoke.uri, smoke.tmp / "mlflow-server.log") as url:
        dom = browser.render(url + tracking_view.view_path(experiment.experiment_id), shot, size=(1800, 900))
    names = {tracking_view.run_name(t) for t in smoke.trials.values()}
    assert len(names) == len(smoke.trials)  # every trial's name is its own
    missing = sorted(name for name in names if f">{name}<" not in dom)
    assert not missing, f"not in the runs table: {missing}"
    # The saved view shows the trials themselves, not the parent run they would be collapsed under.
    assert re.search(rf"<strong>{len(smoke.trials)}</strong> matching runs", dom)
    assert shot.stat().st_size > 10_000
    if os.environ.get("PIPELINE_UPDATE_DOCS") == "1":
        shutil.copyfile(shot, DOCS_SHOT)
