"""Every table carries the identity of what it summarises: settings that differ only in a block's
hparams (or label) stay separate rows, trial-level rows carry the MLflow run id, and the README's
table list states exactly the identifying columns of pipeline/schemas.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from pipeline import aggregate, figures, tracking
from pipeline.config import Trial, validate
from pipeline.labels import SETTING_KEY, TRAJECTORY_KEY, hparams_key
from pipeline.layout import ResultsLayout
from pipeline.records import write_trial_records
from pipeline.runner import run_trial
from pipeline.schemas import IDENTITY_LEVELS, OUTPUT_TABLES
from pipeline.sink import ResultsSink

ROOT = Path(__file__).resolve().parents[1]


def trial(experiment, seed, *, hparams, label=None, algorithm="sgd", lr=0.1, workload="causal_lm"):
    tag = "-".join(f"{k}{v}" for k, v in hparams.items())
    return Trial.model_validate({
        "sweep": "id", "trial_id": "-".join(p for p in (label, experiment, algorithm, tag, f"s{seed}") if p),
        "experiment": experiment, "label": label, "workload": {"name": workload}, "algorithm": algorithm,
        "lr": lr, "hparams": hparams, "seed": seed, "steps": 40,
    })


def write(sweep_dir, t, records):
    """A trial's records, then its done mark (as the sink does: only done trials are aggregated)."""
    layout = ResultsLayout(sweep_dir)
    write_trial_records(layout.records_dir(t.trial_id), t.identity(), records)
    layout.done_mark(t.trial_id).write_text(json.dumps(t.to_json()))


# Two blocks that differ only in SGD's momentum: final losses (mean of the last 5 of 10 points).
FINALS = {0.0: {0: 4.0, 1: 6.0}, 0.9: {0: 1.0, 1: 2.0}}


def write_momentum_blocks(sweep_dir):
    for momentum, by_seed in FINALS.items():
        for seed, final in by_seed.items():
            t = trial("convergence", seed, hparams={"momentum": momentum})
            rows = [{"step": 4 * i, "train_loss": 10.0 if i < 5 else final, "test_loss": None} for i in range(10)]
            write(sweep_dir, t, {"convergence": rows})
        # Sharpness along each: adam's ratio to SGD 0.5 (momentum 0) or 0.25 (momentum 0.9), both seeds.
        for seed in (0, 1):
            t = trial("sharpness", seed, hparams={"momentum": momentum})
            sharp = [{"step": 20, "probe": probe, "probe_algorithm": probe, "probe_clip_fraction": 0.0,
                      "probe_clip_target": "grad", "sharpness": s, "sharpness_raw": s, "robust": False,
                      "ratio_to_sgd": s / 4.0, "grad_correlation": 0.1, "update_norm": 1.0,
                      "sharpness_shifted": None, "ratio_to_sgd_paper": s / 4.0, "clip_tau": None,
                      "grad_zero_fraction": 0.0, "measure_batch": "train", "measure_batch_size": 8,
                      "measure_sub_batch_size": 8}
                     for probe, s in (("sgd", 4.0), ("adam", 2.0 if momentum == 0 else 1.0))]
            write(sweep_dir, t, {"sharpness": sharp})


@pytest.fixture(scope="module")
def momentum(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("results") / "id"
    write_momentum_blocks(sweep_dir)
    return sweep_dir, aggregate.aggregate(ResultsLayout(sweep_dir))


def test_blocks_differing_only_in_one_hparam_stay_separate(momentum):
    _, tables = momentum
    summary = tables["convergence_summary"].to_pandas().set_index("hparams")
    assert sorted(summary.index) == ['{"momentum":0.0}', '{"momentum":0.9}']
    assert summary["n_seeds"].tolist() == [2, 2]  # merged, they would be one row with n_seeds 4
    assert summary.loc['{"momentum":0.0}', "final_loss_mean"] == pytest.approx(5.0)
    assert summary.loc['{"momentum":0.9}', "final_loss_mean"] == pytest.approx(1.5)
    assert summary.loc['{"momentum":0.9}', "final_loss_std"] == pytest.approx(2 ** -0.5)
    table1 = tables["table1_sharpness_ratio"].to_pandas()
    adam = table1[table1.probe == "adam"].groupby("hparams")["ratio_mean"].unique()
    assert {k: list(v) for k, v in adam.items()} == {'{"momentum":0.0}': [0.5], '{"momentum":0.9}': [0.25]}
    assert len(tables["table3_convergence"]) == 2


def test_figures_of_two_settings_never_share_a_file(momentum, tmp_path):
    _, tables = momentum
    stems = figures.render_figures(tables, tmp_path)
    ratio = sorted(s for s in stems if s.startswith("sharpness_ratio"))
    assert ratio == [f"sharpness_ratio_causal_lm_sgd_lr0.1_momentum-{m}" for m in ("0.0", "0.9")]


def test_a_label_alone_also_keeps_settings_apart(tmp_path):
    for label, final in (("a", 3.0), ("b", 7.0)):
        t = trial("convergence", 0, hparams={}, label=label)
        write(tmp_path, t, {"convergence": [{"step": i, "train_loss": final, "test_loss": None} for i in range(5)]})
    summary = aggregate.aggregate(ResultsLayout(tmp_path))["convergence_summary"].to_pylist()
    assert {r["label"]: r["final_loss_mean"] for r in summary} == {"a": 3.0, "b": 7.0}


def test_a_clipped_block_on_its_own_lr_grid_is_compared_with_the_main_blocks_run(tmp_path):
    # conf/quick_causal_lm.yaml's `lionclip` block: only the clipped lion, its baseline in the unlabelled block.
    for label, clip, final in ((None, 0.0, 4.0), ("lionclip", 0.5, 2.0)):
        t = Trial.model_validate({
            "sweep": "id", "trial_id": f"{label}-lion-{clip}", "experiment": "convergence", "label": label,
            "workload": {"name": "causal_lm"}, "algorithm": "lion", "clip_fraction": clip, "clip_target": "update",
            "lr": 0.1, "seed": 0, "steps": 10})
        write(tmp_path, t, {"convergence": [{"step": i, "train_loss": 10.0 if i < 3 else final, "test_loss": None}
                                            for i in range(10)]})
    tables = aggregate.aggregate(ResultsLayout(tmp_path))
    clipped, = [r for r in tables["convergence_summary"].to_pylist() if r["clip_fraction"]]
    assert clipped["label"] == "lionclip" and clipped["baseline_label"] is None
    assert clipped["target_loss"] == 4.0 and clipped["loss_ratio"] == 0.5
    row, = tables["table3_convergence"].to_pylist()
    assert row["label"] == "lionclip" and row["final_loss_mean"] == 4.0 and row["clip_final_loss_mean"] == 2.0


def test_config_blocks_give_trials_their_label_and_canonical_hparams():
    block = {"experiment": "convergence", "workload": {"name": "causal_lm", "size": "tiny"}, "steps": 2}
    config = validate({"name": "m", "experiments": [
        {**block, "label": "m0", "algorithms": {"sgd": {"lr": 0.1, "hparams": {"momentum": 0.0}}}},
        {**block, "label": "m9", "algorithms": {"sgd": {"lr": 0.1, "hparams": {"momentum": 0.9}}}},
    ]})
    identities = [t.identity() for t in config.trials]
    assert [(i["label"], i["hparams"]) for i in identities] == [("m0", '{"momentum":0.0}'), ("m9", '{"momentum":0.9}')]
    assert hparams_key({"b": 1, "a": [0.9, 0.99]}) == '{"a":[0.9,0.99],"b":1}'


def test_schema_identity_levels_are_the_grouping_keys():
    assert IDENTITY_LEVELS["setting"] == SETTING_KEY and IDENTITY_LEVELS["trajectory"] == TRAJECTORY_KEY
    for name, spec in OUTPUT_TABLES.items():
        assert spec.identity in IDENTITY_LEVELS.values(), name
        assert tuple(spec.schema.names[:len(spec.identity)]) == spec.identity, name  # identity columns first


def _readme_identities() -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    text = (ROOT / "README.md").read_text().split("## The tables")[1].split("\n## ")[0]
    levels = {m[1]: tuple(c.strip() for c in m[2].split(","))
              for m in re.finditer(r"^- \*\*(\w+)\*\*: `([^`]+)`$", text, re.M)}
    tables = {m[1]: m[2] for m in re.finditer(r"^\| `(\w+)` \| (\w+) \|", text, re.M)}
    return levels, tables


def test_readme_states_each_tables_identifying_columns():
    levels, tables = _readme_identities()
    assert levels == IDENTITY_LEVELS
    assert set(tables) == set(OUTPUT_TABLES)
    for name, level in tables.items():
        assert OUTPUT_TABLES[name].identity == levels[level], name


def test_trial_rows_carry_the_mlflow_run_id(tmp_path):
    """A real trial, a real MLflow store: the run id in every trial-level table is the trial's run."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    layout = ResultsLayout(tmp_path / "runid")
    t = Trial.model_validate({
        "sweep": "runid", "trial_id": "convergence-sgd-s0", "experiment": "convergence", "label": "m9",
        "workload": {"name": "causal_lm", "size": "tiny", "batch_size": 2, "seq_len": 16}, "algorithm": "sgd",
        "lr": 0.1, "hparams": {"momentum": 0.9}, "seed": 0, "steps": 2, "device": "cpu"})
    sweep_run = tracking.start_sweep(uri, "runid", tags={})
    run_trial(t, ResultsSink(layout, sweep_run))
    sweep_run.end("FINISHED")
    aggregate.aggregate(layout)
    ids = {name: pd.read_parquet(layout.table_path(name))["run_id"].unique().tolist()
           for name in ("convergence", "trials")}
    run_id, = ids["trials"]
    assert ids["convergence"] == [run_id]
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.tags["trial_id"] == t.trial_id and run.data.tags["label"] == "m9"
    assert run.data.tags["hparams"] == '{"momentum":0.9}'
