"""Config schema, YAML loading, overrides, validation messages and the trial grid (no Ray)."""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, Measure, Trial, apply_overrides, load_config, validate
from pipeline.experiments import EXPERIMENTS
from pipeline.labels import DEFAULT_PROBES, optimizer_label
from pipeline.optim import ALGORITHMS
from pipeline.records import identifying_values
from pipeline.workloads import WORKLOADS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "conf").rglob("*.yaml"))
SMOKE = ROOT / "conf" / "smoke.yaml"
TRIAL_KEYS = {"sweep", "trial_id", "experiment", "label", "workload", "algorithm", "clip_fraction", "clip_target",
              "lr", "hparams", "seed", "steps", "device", "measure", "eval_every", "divergence_factor"}


def smoke_raw() -> dict:
    return yaml.safe_load(SMOKE.read_text())


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate(raw)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_every_config_file_loads_and_expands(path):
    config = load_config(path)
    trials = config.trials
    assert trials
    ids = [t.trial_id for t in trials]
    assert len(set(ids)) == len(ids)
    for trial in trials:
        assert isinstance(trial, Trial)
        assert set(trial.to_json()) == TRIAL_KEYS
        assert re.fullmatch(r"[A-Za-z0-9_.=-]+", trial.trial_id), trial.trial_id
        identifying_values(trial.identity())  # what the records writer needs is there


def test_conf_holds_the_smoke_config():
    assert SMOKE in CONFIGS


def test_smoke_grid_is_the_product_of_its_axes():
    raw = smoke_raw()
    trials = validate(raw).trials
    expected = 0
    for block in raw["experiments"]:
        for grid in block["algorithms"].values():
            axes = [grid["lr"] if isinstance(grid["lr"], list) else [grid["lr"]],
                    grid.get("clip_fraction", [0.0]), block["seeds"]]
            expected += len(list(itertools.product(*axes)))
    assert len(trials) == expected
    first = trials[0]
    assert first.trial_id == "sharpness-causal_lm-sgd-lr0.1-seed0"
    assert first.workload["name"] == "causal_lm" and first.workload["batch_size"] == 4
    assert first.measure.at == raw["experiments"][0]["measure"]["at"]
    assert first.measure.probes == DEFAULT_PROBES  # "default": the experiment's own twelve


def test_trial_ids_read_like_probe_labels():
    raw = smoke_raw()
    raw["experiments"] = [raw["experiments"][1]]
    raw["experiments"][0]["algorithms"] = {
        "adam": {"lr": [1e-3], "clip_fraction": [0.0, 0.5], "clip_target": ["grad", "update"]},
        "adafactor": {"lr": None},
    }
    ids = [t.trial_id for t in validate(raw).trials if t.seed == 0]
    # No clipping makes the target meaningless: one trial, not two.
    assert ids == [
        "convergence-causal_lm-adam-lr0.001-seed0",
        "convergence-causal_lm-adam_clip0.5-lr0.001-seed0",
        "convergence-causal_lm-adam_clipupdate0.5-lr0.001-seed0",
        "convergence-causal_lm-adafactor-relstep-seed0",
    ]
    assert optimizer_label("sgd", 0.1, "grad") == "sgd_clip0.1"


def test_overrides_set_nested_keys_list_items_and_yaml_values():
    raw = apply_overrides(smoke_raw(), [
        "experiments.1.steps=5", "ray.num_cpus=2", "experiments.1.algorithms.sgd.lr=[0.1, 1e-2]",
        "tracking_uri=null", "experiments.0.workload.seq_len=16",
    ])
    assert raw["experiments"][1]["steps"] == 5
    assert raw["ray"]["num_cpus"] == 2
    assert raw["experiments"][1]["algorithms"]["sgd"]["lr"] == [0.1, 0.01]  # 1e-2 is a float
    assert raw["tracking_uri"] is None
    config = validate(raw)
    assert config.experiments[0].workload["seq_len"] == 16


@pytest.mark.parametrize("item, needle", [
    ("steps", "expected key.path=value"),
    ("experiments.7.steps=3", "experiments.7: expected an index below 2"),
    ("experiments.first.steps=3", "experiments.first: expected an index below 2"),
    ("name.x=1", "name is not a mapping or list"),
    ("steps=[1", "malformed YAML"),
])
def test_bad_overrides_name_the_override(item, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        apply_overrides(smoke_raw(), [item])


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such config file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nexperiments:\n  - experiment: sharpness\n   steps: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: malformed YAML at line 4"):
        load_config(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("name: x\nresults_dir: a\nname: y\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: malformed YAML at line 3.*duplicate key 'name'"):
        load_config(dup)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(scalar)


def _blocks(*names):
    return [{"experiment": "sharpness", "label": n, "workload": {"name": "causal_lm", "size": "tiny"},
             "steps": 2, "algorithms": {"sgd": {"lr": 0.1}}} for n in names]


def test_include_splices_experiments_in_order(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.yaml").write_text(yaml.safe_dump({"name": "a", "results_dir": "elsewhere",
                                                             "experiments": _blocks("a1", "a2")}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"name": "b", "include": ["sub/a.yaml"],
                                                     "experiments": _blocks("b1")}))
    top = tmp_path / "top.yaml"
    top.write_text(yaml.safe_dump({"name": "top", "include": ["b.yaml"], "experiments": _blocks("t1")}))
    config = load_config(top, ["experiments.3.steps=5"])
    assert [b.label for b in config.experiments] == ["a1", "a2", "b1", "t1"]
    assert config.name == "top" and config.results_dir == "results"  # included settings ignored
    assert config.experiments[3].steps == 5  # overrides index the spliced list
    only = tmp_path / "only.yaml"
    only.write_text("name: only\ninclude: sub/a.yaml\n")  # no own experiments; a single path
    assert [b.label for b in load_config(only).experiments] == ["a1", "a2"]


def test_include_errors_name_the_file(tmp_path):
    top = tmp_path / "top.yaml"
    top.write_text("name: t\ninclude: [missing.yaml]\n")
    with pytest.raises(ConfigError, match=r"top\.yaml: include: missing\.yaml: no such config file"):
        load_config(top)
    top.write_text("name: t\ninclude: [loop.yaml]\n")
    (tmp_path / "loop.yaml").write_text("name: l\ninclude: [top.yaml]\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_config(top)
    top.write_text("name: t\ninclude: {a: 1}\n")
    with pytest.raises(ConfigError, match="include: expected a list"):
        load_config(top)
    top.write_text("name: t\ninclude: [noexp.yaml]\n")
    (tmp_path / "noexp.yaml").write_text("name: n\n")
    with pytest.raises(ConfigError, match=r"noexp\.yaml: experiments: expected a list"):
        load_config(top)


def _set(raw: dict, path: str, value) -> dict:
    raw = copy.deepcopy(raw)
    return apply_overrides(raw, [f"{path}={yaml.safe_dump(value, default_flow_style=True).strip()}"])


def test_unknown_keys_are_rejected_everywhere_with_the_allowed_ones():
    raw = smoke_raw()
    assert error_of(_set(raw, "bogus", 1)).startswith("bogus: unknown key; allowed: name, ")
    message = error_of(_set(raw, "experiments.0.measure.landscape", [0.1]))
    assert message.startswith("experiments.0.measure.landscape: unknown key") and "landscape_offsets" in message
    assert error_of(_set(raw, "experiments.1.algorithms.sgd.momentum", 0.9)).startswith(
        "experiments.1.algorithms.sgd.momentum: unknown key")
    assert error_of(_set(raw, "ray.adress", "auto")).startswith("ray.adress: unknown key")


def test_registry_names_are_checked_and_the_allowed_ones_listed():
    raw = smoke_raw()
    raw["experiments"][1]["algorithms"]["sgdm"] = {"lr": 0.1}
    message = error_of(raw)
    assert message.startswith("experiments.1.algorithms.sgdm: unknown algorithm 'sgdm'")
    assert all(name in message for name in ALGORITHMS) and len(ALGORITHMS) == 6
    message = error_of(_set(smoke_raw(), "experiments.0.workload.name", "gpt5"))
    assert message.startswith("experiments.0.workload.name: unknown workload 'gpt5'")
    assert all(name in message for name in WORKLOADS)
    message = error_of(_set(smoke_raw(), "experiments.0.experiment", "magic"))
    assert message.startswith("experiments.0.experiment: unknown experiment") and all(n in message for n in EXPERIMENTS)


@pytest.mark.parametrize("path, value, needle", [
    ("experiments.1.algorithms.sgd.clip_fraction", [0.0, 1.5], "experiments.1.algorithms.sgd.clip_fraction.1:"),
    ("experiments.1.algorithms.sgd.clip_fraction", -0.1, "experiments.1.algorithms.sgd.clip_fraction.0:"),
    ("experiments.1.algorithms.sgd.lr", 0, "experiments.1.algorithms.sgd.lr.0: Input should be greater than 0"),
    ("experiments.1.algorithms.adam.lr", [-1e-3], "experiments.1.algorithms.adam.lr.0: Input should be greater than 0"),
    ("experiments.1.algorithms.sgd.lr", None,
     "experiments.1.algorithms.sgd.lr: null (relative step) is allowed only for adafactor"),
    ("experiments.0.steps", 2.5, "experiments.0.steps: Input should be a valid integer"),
    ("experiments.0.steps", True, "experiments.0.steps: Input should be a valid integer"),
    ("experiments.0.workload.size", "huge", "experiments.0.workload.size: "),
    ("experiments.0.workload.batch_size", 0, "experiments.0.workload.batch_size: "),  # the workload's own check
    ("experiments.0.measure.every", 2, "experiments.0.measure: give `at` or `every`, not both"),
    ("experiments.0.measure.gn_params", "(", "experiments.0.measure.gn_params: expected attention, all or a regular"),
    ("experiments.0.measure.share_fractions", [0.0], "experiments.0.measure.share_fractions.0: Input should be"),
    ("experiments.0.measure.sub_batch_size", 3, "experiments.0.measure.sub_batch_size: 3 must divide"),
    ("experiments.0.measure.batch", "valid", "experiments.0.measure.batch: "),
    ("experiments.0.measure.histogram_scale", "log", "experiments.0.measure.histogram_scale: "),
    ("experiments.0.measure.histogram_lo", 2.0, "experiments.0.measure.histogram_lo: 2.0 must be below"),
    ("experiments.0.measure.hutchinson_samples", 1, "experiments.0.measure.hutchinson_samples: "),
    ("experiments.0.measure.search_growth", 1.0, "experiments.0.measure.search_growth: "),
    ("device", "cuda", "device: 'cuda' needs resources_per_trial.gpu > 0"),
    ("name", "a/b", "name: 'a/b' must be a filesystem-safe word"),
    ("experiments.0.experiment", "smoothness", "experiments.0.workload.name: smoothness needs a two-class classifier"),
    ("experiments.0.measure.probes", [{"label": "x", "algorithm": "adamw"}],
     "experiments.0.measure.probes.0: unknown algorithm 'adamw'"),
    ("experiments.0.measure.probes", [{"label": "x", "algorithm": "sgd", "lr": None}],
     "experiments.0.measure.probes.0.lr: null"),
])
def test_values_out_of_range_name_the_key(path, value, needle):
    message = error_of(_set(smoke_raw(), path, value))
    assert message.startswith(needle), message


def test_measure_defaults_are_the_papers():
    m = Measure()
    assert (m.batch, m.batch_size, m.sub_batch_size) == ("train", 1024, None)  # App. B
    assert (m.histogram_scale, m.histogram_bins, m.histogram_lo, m.histogram_hi) == ("absolute", 30, None, None)
    assert m.landscape_search and m.hutchinson_samples >= 64


def test_relative_step_is_allowed_for_adafactor_only():
    raw = _set(smoke_raw(), "experiments.1.algorithms.adafactor", {"lr": [None, 0.01]})
    lrs = [t.lr for t in validate(raw).trials if t.algorithm == "adafactor"]
    assert lrs == [None, None, 0.01, 0.01]


@pytest.mark.parametrize("path, value, needle", [
    ("experiments", [], "experiments: empty list"),
    ("experiments.0.seeds", [], "experiments.0.seeds: empty list"),
    ("experiments.1.algorithms", {}, "experiments.1.algorithms: empty mapping"),
    ("experiments.1.algorithms.adam.lr", [], "experiments.1.algorithms.adam.lr: empty list"),
    ("experiments.1.algorithms.sgd.clip_fraction", [], "experiments.1.algorithms.sgd.clip_fraction: empty list"),
])
def test_an_empty_grid_is_an_error(path, value, needle):
    message = error_of(_set(smoke_raw(), path, value))
    assert message.startswith(needle) and "no trials" in message


def test_blocks_that_repeat_trial_ids_need_a_label():
    raw = smoke_raw()
    raw["experiments"].append(copy.deepcopy(raw["experiments"][1]))
    assert "repeats one of experiments.1; give one block a distinct `label`" in error_of(raw)
    raw["experiments"][2]["label"] = "again"
    ids = [t.trial_id for t in validate(raw).trials]
    assert "again-convergence-causal_lm-adam-lr0.001-seed1" in ids and len(set(ids)) == len(ids)


def test_optimizer_hyper_parameters_are_checked_by_the_optimizer_itself():
    raw = _set(smoke_raw(), "experiments.1.algorithms.sgd.hparams", {"bogus_knob": 1.0})
    assert error_of(raw).startswith("experiments.1.algorithms.sgd: ")
    raw = _set(smoke_raw(), "experiments.1.algorithms.sgd.hparams", {"momentum": 0.5})
    trials = [t for t in validate(raw).trials if t.experiment == "convergence" and t.algorithm == "sgd"]
    assert {t.hparams["momentum"] for t in trials} == {0.5}


def test_data_dir_reaches_every_workload_as_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = validate(_set(smoke_raw(), "data_dir", "cache"))
    assert {t.workload["data_dir"] for t in config.trials} == {str(tmp_path / "cache")}
    assert config.layout.sweep_dir == tmp_path / "results" / "smoke"
