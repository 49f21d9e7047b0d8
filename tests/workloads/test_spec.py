"""Workload spec validation: one-line ValueErrors naming the key, raised before any data work."""

import pytest

import pipeline.data as data
from pipeline.workloads import WORKLOADS, WorkloadDefinition, build_workload, validate_workload_spec


@pytest.fixture(autouse=True)
def no_data(monkeypatch):
    """Any data access fails loudly: validation must reject bad specs before touching data."""
    def boom(*args, **kwargs):
        raise AssertionError("data was loaded before the spec was validated")

    for name in ("load_code_files", "load_translation_pairs", "load_reviews",
                 "load_fashion_mnist", "minilm_dir"):
        monkeypatch.setattr(data, name, boom)


def test_registry_has_the_four_workloads():
    assert set(WORKLOADS) == {"causal_lm", "translation", "classification", "image"}


def test_unknown_workload_lists_the_allowed_names():
    with pytest.raises(ValueError) as err:
        build_workload({"name": "vision_transformer"}, seed=0, device="cpu")
    message = str(err.value)
    assert "workload.name" in message and "\n" not in message
    for name in ("causal_lm", "translation", "classification", "image"):
        assert name in message


@pytest.mark.parametrize(
    "spec, key",
    [
        ({"name": "image", "size": "huge"}, "workload.size"),
        ({"name": "image", "batch_size": 0}, "workload.batch_size"),
        ({"name": "image", "batch_size": -4}, "workload.batch_size"),
        ({"name": "image", "batch_size": 2.5}, "workload.batch_size"),
        ({"name": "image", "batch_size": True}, "workload.batch_size"),
        ({"name": "image", "batch_size": "8"}, "workload.batch_size"),
        ({"name": "image", "test_batch_size": 0}, "workload.test_batch_size"),
        ({"name": "image", "max_train_examples": 0}, "workload.max_train_examples"),
        ({"name": "causal_lm", "seq_len": 1}, "workload.seq_len"),
        ({"name": "causal_lm", "vocab_size": -1}, "workload.vocab_size"),
        ({"name": "translation", "vocab_size": 100}, "workload.vocab_size"),  # tokenizers: >= 512
        ({"name": "image", "seq_len": 64}, "'seq_len'"),  # images have no sequence length
        ({"name": "translation", "colour": "red"}, "'colour'"),
        ({"name": "translation", "source": "s3"}, "workload.source"),
        ({"name": "translation", "dtype": "float16"}, "workload.dtype"),
        ({"name": "classification", "corpus": "yelp"}, "workload.corpus"),
        ({"name": "classification", "pretrained": "yes"}, "workload.pretrained"),
        ({"name": "image", "pretrained": True}, "workload.pretrained"),
        ({"name": "causal_lm", "pretrained": True}, "workload.pretrained"),  # hub only
        ({"name": "causal_lm", "model": {"hidden_sise": 8}}, "workload.model"),
        ({"name": "causal_lm", "model": [8]}, "workload.model"),
        ({"name": "translation", "model": {"vocab_size": 100}}, "workload.model"),
        ({"name": "classification", "pretrained": True, "model": {"hidden_size": 8}},
         "workload.model"),
        ({"name": "image", "data_dir": 3}, "workload.data_dir"),
    ],
)
def test_bad_spec_names_the_key(spec, key):
    with pytest.raises(ValueError) as err:
        build_workload(spec, seed=0, device="cpu")
    assert key in str(err.value) and "\n" not in str(err.value)


def test_unknown_key_lists_the_allowed_keys():
    with pytest.raises(ValueError, match="allowed: .*batch_size"):
        validate_workload_spec({"name": "image", "colour": "red"})


def test_spec_must_be_a_mapping_and_seed_an_integer():
    with pytest.raises(ValueError, match="workload: expected a mapping"):
        build_workload(["image"], seed=0, device="cpu")
    with pytest.raises(ValueError, match="seed"):
        build_workload({"name": "image"}, seed=1.5, device="cpu")
    with pytest.raises(ValueError, match="device"):
        build_workload({"name": "image"}, seed=0, device="gpu0")


def test_defaults_come_from_the_size_preset_and_explicit_keys_win():
    tiny = validate_workload_spec({"name": "causal_lm"})
    paper = validate_workload_spec({"name": "causal_lm", "size": "paper", "seq_len": 1024})
    assert tiny["size"] == "tiny" and tiny["source"] == "local" and tiny["dtype"] == "float32"
    assert tiny["test_batch_size"] == tiny["batch_size"]
    assert paper["seq_len"] == 1024 and paper["max_train_examples"] is None
    assert paper["batch_size"] != tiny["batch_size"]
    # An explicit null for a data cap means "everything", not the preset's cap.
    spec = validate_workload_spec({"name": "image", "max_train_examples": None, "batch_size": None})
    assert spec["max_train_examples"] is None and spec["batch_size"] == tiny_image_batch()


def test_registry_holds_definitions_keyed_by_their_names():
    assert all(name == definition.name for name, definition in WORKLOADS.items())
    assert all(isinstance(d, WorkloadDefinition) for d in WORKLOADS.values())


def tiny_image_batch():
    return validate_workload_spec({"name": "image"})["batch_size"]


@pytest.mark.parametrize("name", ["causal_lm", "translation", "classification", "image"])
@pytest.mark.parametrize("size", ["tiny", "paper"])
def test_a_validated_spec_validates_to_itself(name, size):
    """pipeline.config puts the validated spec into each trial; the trial builds from it."""
    full = validate_workload_spec({"name": name, "size": size})
    assert validate_workload_spec(full) == full
