"""The workload registry and spec validation, torch-free: `WORKLOADS[name]` is a WorkloadDefinition."""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: importing this module must not import torch
    import torch

    from pipeline.workloads.base import Workload

SIZES = ("tiny", "small", "paper")
SOURCES = ("local", "hub")
DTYPE_NAMES = ("float32", "float64")  # pipeline.workloads.base.DTYPES maps them to torch dtypes
# Keys every workload spec may carry; a workload adds its own (seq_len, vocab_size, corpus ...).
COMMON_KEYS = (
    "name", "size", "batch_size", "test_batch_size", "source", "data_dir", "dtype",
    "pretrained", "max_train_examples", "max_test_examples", "model",
)
CAPS = ("max_train_examples", "max_test_examples")  # data caps; None = all the data
# pipeline.data trains local tokenizers of 512 to 65,536 entries (its get_tokenizer's range).
VOCAB_RANGE = (512, 65_536)
# `model:` override fields that are sizes (counts): layers, heads, widths, kernels, positions.
_SIZE_FIELD = re.compile(r"(^num_|^n_|_size$|_sizes$|_layers$|_heads$|^depths$|_dim$|^d_|_positions$|_channels$)")


def resolve(reference: str) -> Any:
    """The object a "package.module:attribute" reference names (importing the module)."""
    module, _, attribute = reference.partition(":")
    if not module or not attribute:
        raise ValueError(f"not a 'module:attribute' reference: {reference!r}")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class WorkloadDefinition:
    """Everything known about a workload without building it (and without importing torch).

    `builder` ("module:function") builds it from a validated spec: `fn(spec, *, seed, device)`.
    `config_class` ("module:Class") is the HF config class that `model:` overrides must fit;
    both are imported only when used.
    """

    name: str
    builder: str
    is_transformer: bool
    num_classes: int | None  # classifiers: the number of classes; None for language models
    presets: Mapping[str, Mapping[str, Any]]  # size -> defaults of the per-size keys
    extra_keys: tuple[str, ...] = ()  # spec keys beyond COMMON_KEYS
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # key -> allowed values
    fixed_fields: tuple[str, ...] = ()  # config fields the data decides: `model:` may not set them
    pretrained_sources: tuple[str, ...] = ()  # sources on which `pretrained: true` is allowed
    config_class: str | None = None
    local_tokenizer: str | None = None  # the pipeline.data tokenizer kind of `source: local`

    @property
    def supports_smoothness(self) -> bool:
        """The Gauss-Newton smoothness analysis needs a two-class classifier (two logits)."""
        return self.num_classes == 2

    def load_builder(self) -> Callable[..., Workload]:
        """The build function (imports the workload's module, hence torch and transformers)."""
        return resolve(self.builder)

    def load_config_class(self) -> type | None:
        """The HF config class that `model:` overrides must fit, or None (imports it)."""
        return None if self.config_class is None else resolve(self.config_class)


CAUSAL_LM = WorkloadDefinition(
    name="causal_lm", builder="pipeline.workloads.causal_lm:build",
    is_transformer=True, num_classes=None,
    # Data defaults per size; `max_*_examples` count source files. Tiny/small read a fixed subset
    # (tokenizing takes a second or a few, not minutes); paper reads the whole corpus.
    presets={
        "tiny": {"batch_size": 8, "seq_len": 64, "vocab_size": 512,
                 "max_train_examples": 64, "max_test_examples": 16},
        "small": {"batch_size": 16, "seq_len": 128, "vocab_size": 8192,
                  "max_train_examples": 400, "max_test_examples": 40},
        # Table 2: batch 1000 (the paper does not give its sequence length: 512 here).
        "paper": {"batch_size": 1000, "seq_len": 512, "vocab_size": 50257,
                  "max_train_examples": None, "max_test_examples": None},
    },
    extra_keys=("seq_len", "vocab_size"),
    fixed_fields=("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "use_cache"),
    pretrained_sources=("hub",),
    config_class="transformers:GPTNeoConfig",
    local_tokenizer="code_bpe",  # byte-level BPE trained on the train split (pipeline.data)
)

TRANSLATION = WorkloadDefinition(
    name="translation", builder="pipeline.workloads.translation:build",
    is_transformer=True, num_classes=None,
    # Data defaults per size; `max_*_examples` count sentence pairs, `seq_len` caps both sides.
    # Paper (Table 2, App. B.1): batch 1024 on a fixed subset of 10,240 pairs (10 steps an epoch),
    # 128 tokens a side.
    presets={
        "tiny": {"batch_size": 8, "seq_len": 64, "vocab_size": 512,
                 "max_train_examples": 512, "max_test_examples": 64},
        "small": {"batch_size": 32, "seq_len": 96, "vocab_size": 8000,
                  "max_train_examples": 8000, "max_test_examples": 512},
        "paper": {"batch_size": 1024, "seq_len": 128, "vocab_size": 32128,
                  "max_train_examples": 10240, "max_test_examples": None},
    },
    extra_keys=("seq_len", "vocab_size"),
    fixed_fields=("vocab_size", "pad_token_id", "eos_token_id", "decoder_start_token_id",
                  "use_cache"),
    pretrained_sources=("hub",),
    config_class="transformers:T5Config",
    local_tokenizer="enfr_unigram",  # SentencePiece-style Unigram trained on en+fr (pipeline.data)
)

# 1,500 full IMDb reviews, 10,605 short snippets, 4,000 sentences (docs/data.md; pipeline.data).
CORPORA = ("polarity", "snippets", "polarity_sentences")

CLASSIFICATION = WorkloadDefinition(
    name="classification", builder="pipeline.workloads.classification:build",
    is_transformer=True, num_classes=2,  # review sentiment: negative / positive
    # Data defaults per size; `max_*_examples` count reviews. Full reviews (~745 words) are cut to
    # seq_len tokens; snippets are short and padded.
    presets={
        "tiny": {"batch_size": 8, "seq_len": 64, "vocab_size": 1024, "corpus": "polarity",
                 "max_train_examples": 256, "max_test_examples": 64},
        "small": {"batch_size": 16, "seq_len": 256, "vocab_size": 8000, "corpus": "polarity",
                  "max_train_examples": None, "max_test_examples": None},
        # App. D.1: batch 25 (the Gauss-Newton analysis; BERT's 512 positions).
        "paper": {"batch_size": 25, "seq_len": 512, "vocab_size": 30522, "corpus": "polarity",
                  "max_train_examples": None, "max_test_examples": None},
    },
    extra_keys=("seq_len", "vocab_size", "corpus"),
    choices={"corpus": CORPORA},
    fixed_fields=("vocab_size", "pad_token_id", "num_labels"),
    pretrained_sources=("local", "hub"),
    config_class="transformers:BertConfig",
    local_tokenizer="reviews_wordpiece",  # BERT-style WordPiece trained on the reviews
)

IMAGE = WorkloadDefinition(
    name="image", builder="pipeline.workloads.image:build",
    is_transformer=False, num_classes=10,  # Fashion-MNIST's (hub: CIFAR-10's) ten classes
    presets={
        "tiny": {"batch_size": 16, "max_train_examples": 1024, "max_test_examples": 256},
        "small": {"batch_size": 64, "max_train_examples": None, "max_test_examples": None},
        "paper": {"batch_size": 1000, "max_train_examples": None, "max_test_examples": None},  # App. E
    },
    fixed_fields=("num_channels", "num_labels"),
    config_class="transformers:ResNetConfig",
)

# The registry, by name. A new workload: a definition here and a module with its builder.
WORKLOADS: dict[str, WorkloadDefinition] = {
    d.name: d for d in (CAUSAL_LM, TRANSLATION, CLASSIFICATION, IMAGE)
}


def build_workload(spec: Mapping[str, Any], *, seed: int,
                   device: str | torch.device) -> Workload:
    """Validate the spec (before any data or model work) and build the named workload."""
    full = validate_workload_spec(spec)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    import torch  # the build needs it anyway; importing this module must not

    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: not a torch device: {device!r}") from None
    return WORKLOADS[full["name"]].load_builder()(full, seed=seed, device=device)


def validate_workload_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check a workload spec and return it with the size preset's defaults filled in.

    A key given as None takes its default, except the `max_*_examples` caps, where None means
    "all the data". Raises a one-line ValueError naming the offending key and allowed values.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"workload: expected a mapping, got {type(spec).__name__}")
    name = spec.get("name")
    if name not in WORKLOADS:
        raise ValueError(f"workload.name: unknown workload {name!r}; "
                         f"allowed: {', '.join(sorted(WORKLOADS))}")
    definition = WORKLOADS[name]
    allowed = COMMON_KEYS + definition.extra_keys
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ValueError(f"workload: unknown key(s) {', '.join(map(repr, unknown))} for "
                         f"{name!r}; allowed: {', '.join(allowed)}")
    choices = {"size": SIZES, "source": SOURCES, "dtype": DTYPE_NAMES, **definition.choices}
    for key, values in choices.items():
        if spec.get(key) is not None and spec[key] not in values:
            raise ValueError(f"workload.{key}: {spec[key]!r} is not one of {', '.join(values)}")
    full = {"size": "tiny", "source": "local", "dtype": "float32", "pretrained": False,
            "data_dir": None, "model": {}}
    full.update(definition.presets[spec.get("size") or "tiny"])
    full.update({k: v for k, v in spec.items() if v is not None or k in CAPS})
    full.setdefault("test_batch_size", full["batch_size"])
    _check_integers(full)
    if not isinstance(full["pretrained"], bool):
        raise ValueError(f"workload.pretrained: expected true or false, got {full['pretrained']!r}")
    if full["pretrained"] and full["source"] not in definition.pretrained_sources:
        where = " or ".join(f"source: {s}" for s in definition.pretrained_sources) or "no source"
        raise ValueError(f"workload.pretrained: {name!r} has pretrained weights only with {where}")
    if full["data_dir"] is not None and not isinstance(full["data_dir"], (str, os.PathLike)):
        raise ValueError(f"workload.data_dir: expected a path, got {full['data_dir']!r}")
    _check_model_overrides(name, definition, full)
    return full


def _check_integers(full: Mapping[str, Any]) -> None:
    lowest = {"seq_len": 2, "vocab_size": VOCAB_RANGE[0]}
    for key in ("batch_size", "test_batch_size", "seq_len", "vocab_size", *CAPS):
        value = full.get(key)
        if key not in full or (value is None and key in CAPS):
            continue
        lo, hi = lowest.get(key, 1), VOCAB_RANGE[1] if key == "vocab_size" else None
        in_range = isinstance(value, int) and lo <= value <= (hi or value)
        if isinstance(value, bool) or not in_range:
            bound = f"in [{lo}, {hi}]" if hi else f">= {lo}"
            raise ValueError(f"workload.{key}: expected an integer {bound}, got {value!r}")


def _check_model_overrides(name: str, definition: WorkloadDefinition,
                           full: Mapping[str, Any]) -> None:
    overrides = full["model"]
    if not isinstance(overrides, Mapping):
        raise ValueError(f"workload.model: expected a mapping of config fields, got {overrides!r}")
    if overrides and full["pretrained"]:
        raise ValueError("workload.model: config overrides conflict with pretrained: true "
                         "(the checkpoint fixes the model)")
    for key, value in overrides.items():  # sizes: counts of layers, heads, units, channels
        values = value if isinstance(value, list) else [value]
        sized = _SIZE_FIELD.search(key) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        if sized and (not values or min(values) < 1):
            raise ValueError(f"workload.model.{key}: {value!r} is not a size; expected "
                             f"{'a list of ' if isinstance(value, list) else 'an '}integer(s) >= 1")
    config_class = definition.load_config_class() if overrides else None
    if config_class is not None:
        known = config_class()
        unknown = sorted(k for k in overrides if not hasattr(known, k))
        if unknown:
            raise ValueError(f"workload.model: {', '.join(map(repr, unknown))} not a field of "
                             f"{config_class.__name__} ({name!r})")
    fixed = sorted(set(overrides) & set(definition.fixed_fields))
    if fixed:
        raise ValueError(f"workload.model: {', '.join(map(repr, fixed))} set by the workload "
                         f"itself (from its data and tokenizer), not by an override")
