"""Workloads (model + data + loss behind one interface, base.Workload), looked up by name.

`build_workload(spec, seed=, device=)` takes the YAML `workload:` mapping:

  name                causal_lm | translation | classification | image
  size                tiny (CPU, ~0.1-0.2M parameters) | small (~1-10M) | paper (GPT-Neo-125M,
                      t5-small, bert-base, ResNet-18 dimensions); sets the defaults below
  batch_size          training minibatch; test_batch_size: the fixed test batch (= batch_size)
  seq_len, vocab_size text only: token cap per sequence (per side for translation), size of
                      the locally trained tokenizer (512..65536; ignored for hub/MiniLM ones)
  source              local (docs/data.md's corpora, offline) | hub (the paper's datasets and
                      tokenizers; fails in one line naming `source: local` when unreachable)
  pretrained          classification: the MiniLM BERT (local) or bert-base-uncased (hub);
                      causal_lm / translation: gpt-neo-125M / t5-small weights (hub only)
  corpus              classification, local only: polarity | snippets | polarity_sentences
  max_train_examples, max_test_examples
                      caps on files / pairs / reviews / images (a fixed subset; null = all)
  dtype               float32 | float64 (float64 is exact: see precision.py)
  data_dir            the prepared cache (default: $PIPELINE_DATA_DIR or ~/.cache/...)
  model               HF config fields overriding the size preset, e.g. {num_layers: 4}

`validate_workload_spec(spec)` checks a spec and fills the defaults without building anything.
`WORKLOADS[name]` is the workload's WorkloadDefinition (presets, spec keys and facts such as
`is_transformer`, `num_classes`, `supports_smoothness`). Importing this package, and
pipeline.workloads.definitions, loads neither torch nor transformers: `build_workload` imports the
workload's module when called, and `Workload` is imported on first access.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from pipeline.data import HubUnavailableError
from pipeline.workloads.definitions import (
    SIZES, SOURCES, WORKLOADS, WorkloadDefinition, build_workload, validate_workload_spec,
)

__all__ = [
    "SIZES", "SOURCES", "WORKLOADS", "HubUnavailableError", "Workload", "WorkloadDefinition",
    "build_workload", "validate_workload_spec", "warm_tokenizers",
]

if TYPE_CHECKING:
    from pipeline.workloads.base import Workload

# Names that need torch: imported on first access (module __getattr__, PEP 562).
_LAZY = {"Workload": "pipeline.workloads.base"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline.workloads' has no attribute {name!r}")


def warm_tokenizers(sizes: tuple[str, ...] = ("tiny", "small"),
                    data_dir: str | os.PathLike[str] | None = None) -> list[tuple[str, int]]:
    """Trains (or finds cached) the local tokenizers that these size presets use.

    Run by `python -m pipeline setup`, so that concurrent trials and the tests find them cached
    instead of each paying the first-use training (the Unigram one takes ~20 s on 2 cores).
    """
    from pipeline import data

    done = []
    for definition in WORKLOADS.values():
        if definition.local_tokenizer is None:
            continue
        for size in sizes:
            vocab = definition.presets[size]["vocab_size"]
            data.get_tokenizer(definition.local_tokenizer, vocab_size=vocab, data_dir=data_dir)
            done.append((definition.local_tokenizer, vocab))
    return done
