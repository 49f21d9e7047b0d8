"""The contract every registered workload meets (tiny size, a slice of the real data): add one, get these."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass
from itertools import islice

import pytest
import torch
from transformers import PretrainedConfig

from pipeline.data import TOKENIZER_KINDS
from pipeline.measure import gauss_newton_smoothness
from pipeline.workloads import WORKLOADS, Workload, WorkloadDefinition, build_workload
from pipeline.workloads.definitions import COMMON_KEYS, SIZES, validate_workload_spec

NAMES = list(WORKLOADS)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Small batches over a fixed slice of each corpus: a build takes a second or two on 2 cores.
SLICE = {"size": "tiny", "batch_size": 4, "max_train_examples": 32, "max_test_examples": 16}
N_BATCHES = 3


@dataclass
class Built:
    definition: WorkloadDefinition
    first: Workload  # seed 0
    again: Workload  # seed 0, built a second time
    other: Workload  # seed 1


@pytest.fixture(scope="module", params=NAMES)
def built(request: pytest.FixtureRequest) -> Built:
    """Three builds per workload, shared by this module's tests (pytest groups them by param)."""
    name = request.param

    def build(seed: int) -> Workload:
        return build_workload({"name": name, **SLICE}, seed=seed, device=DEVICE)

    return Built(WORKLOADS[name], build(0), build(0), build(1))


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


def first_batches(workload: Workload) -> list[dict[str, torch.Tensor]]:
    return list(islice(workload.train_batches(), N_BATCHES))


def same_batches(xs: list[dict[str, torch.Tensor]], ys: list[dict[str, torch.Tensor]]) -> bool:
    return all(x.keys() == y.keys() and all(x[k].shape == y[k].shape and torch.equal(x[k], y[k])
                                            for k in x) for x, y in zip(xs, ys, strict=True))


# --- the definitions (nothing built) --------------------------------------------------------


def test_importing_the_registry_loads_neither_torch_nor_transformers():
    code = ("import sys, pipeline.workloads, pipeline.workloads.definitions\n"
            "from pipeline.workloads import WORKLOADS, validate_workload_spec\n"
            "for name in WORKLOADS:\n"
            "    WORKLOADS[name].supports_smoothness\n"
            "    validate_workload_spec({'name': name, 'size': 'paper'})\n"
            "heavy = sorted({'torch', 'transformers'} & set(sys.modules))\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", NAMES)
def test_definition_is_complete_and_its_references_resolve(name):
    d = WORKLOADS[name]
    assert isinstance(d, WorkloadDefinition) and d.name == name
    assert set(d.presets) == set(SIZES)
    allowed = set(COMMON_KEYS) | set(d.extra_keys)
    for size in SIZES:
        assert "batch_size" in d.presets[size] and set(d.presets[size]) <= allowed
        assert validate_workload_spec({"name": name, "size": size})["size"] == size
    assert set(d.choices) <= allowed and set(d.pretrained_sources) <= {"local", "hub"}
    assert callable(d.load_builder())
    config_class = d.load_config_class()
    assert config_class is None or issubclass(config_class, PretrainedConfig)
    assert config_class is not None or not d.fixed_fields
    # A local tokenizer exactly for the text workloads (those with a vocabulary size).
    assert (d.local_tokenizer is not None) == ("vocab_size" in d.extra_keys)
    assert d.local_tokenizer is None or d.local_tokenizer in TOKENIZER_KINDS
    assert d.num_classes is None or (isinstance(d.num_classes, int) and d.num_classes >= 2)
    assert d.supports_smoothness == (d.num_classes == 2)


# --- the built workloads ----------------------------------------------------------------------


def test_builds_on_the_device(built):
    w, d = built.first, built.definition
    assert isinstance(w, Workload) and w.name == d.name and w.device == DEVICE
    assert w.is_transformer is d.is_transformer
    tensors = [*w.model.parameters(), *w.model.buffers(), *w.test_batch.values(),
               *next(w.train_batches()).values()]
    assert all(t.device.type == DEVICE.type for t in tensors)


def test_loss_is_a_finite_scalar(built):
    w = built.first
    w.model.eval()
    with torch.no_grad():
        for batch in (w.test_batch, next(w.train_batches())):
            loss = w.loss(batch)
            assert loss.dim() == 0 and loss.is_floating_point() and math.isfinite(float(loss))
            assert w.target_count(batch) > 0


def test_loss_fn_equals_loss_with_the_modules_weights(built):
    w = built.first
    w.model.eval()
    params = {n: p.detach() for n, p in w.model.named_parameters()}
    with torch.no_grad():
        assert torch.equal(w.loss_fn(w.test_batch)(params), w.loss(w.test_batch))


def test_train_batches_are_fixed_by_the_seed(built):
    batches = first_batches(built.first)
    assert all(b["labels"].shape[0] == SLICE["batch_size"] for b in batches)
    assert same_batches(batches, first_batches(built.first))  # every call restarts the stream
    assert same_batches(batches, first_batches(built.again))
    assert not same_batches(batches, first_batches(built.other))


def test_test_batch_is_fixed_by_the_seed(built):
    x, y = built.first.test_batch, built.again.test_batch
    assert x["labels"].shape[0] == SLICE["batch_size"]
    assert same_batches([x], [y])
    assert not same_batches([x], [built.other.test_batch])


def test_facts_match_the_model(built):
    """is_transformer: the model has attention layers; num_classes: the logits' width and the
    config's num_labels; supports_smoothness: the Gauss-Newton analysis runs on it."""
    w, d = built.first, built.definition
    w.model.eval()
    attention = any("attention" in type(m).__name__.lower() for m in w.model.modules())
    assert d.is_transformer is attention
    inputs = model_inputs(w.test_batch)  # as the smoothness experiment feeds the model
    with torch.no_grad():
        logits = w.model(**inputs).logits
    n = SLICE["batch_size"]
    if d.num_classes is not None:
        assert logits.shape == (n, d.num_classes) and w.model.config.num_labels == d.num_classes
        assert w.target_count(w.test_batch) == n
    else:
        assert logits.dim() == 3 and logits.shape[0] == n  # (B, T, vocab): a language model
    assert d.supports_smoothness is (d.num_classes == 2 and logits.shape == (n, 2))
    if d.supports_smoothness:
        result = gauss_newton_smoothness(w.model, {k: v[:2] for k, v in inputs.items()})
        assert math.isfinite(float(result["L"])) and float(result["L"]) > 0
