"""Real corpora, a pretrained BERT and local tokenizers, in a checksummed local cache (docs/data.md)."""

import importlib

from pipeline.data.cache import DataMissingError, DataPreparationError, default_data_dir
from pipeline.data.loaders import (load_code_files, load_fashion_mnist, load_reviews,
                                   load_translation_pairs, minilm_dir)
from pipeline.data.prepare import prepare
from pipeline.data.sources import SOURCES

# Imported on first use: they pull in transformers / datasets (seconds), which
# `python -m pipeline setup` and the plain loaders do not need.
_LAZY = {
    "get_tokenizer": "pipeline.data.vocab",
    "TOKENIZER_KINDS": "pipeline.data.vocab",
    "HubUnavailableError": "pipeline.data.hub",
    "load_hub_code_files": "pipeline.data.hub",
    "load_hub_code": "pipeline.data.hub",
    "load_hub_translation_pairs": "pipeline.data.hub",
    "load_hub_reviews": "pipeline.data.hub",
    "load_hub_images": "pipeline.data.hub",
}

__all__ = [
    "SOURCES", "DataMissingError", "DataPreparationError", "default_data_dir", "prepare",
    "load_code_files", "load_translation_pairs", "load_reviews", "load_fashion_mnist",
    "minilm_dir", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline.data' has no attribute {name!r}")
