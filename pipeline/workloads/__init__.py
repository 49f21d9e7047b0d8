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
"""

from pipeline.data import HubUnavailableError
from pipeline.workloads.base import (
    SIZES, SOURCES, WORKLOADS, Workload, build_workload, validate_workload_spec,
)

# Importing the workload modules registers them in WORKLOADS.
from pipeline.workloads import causal_lm, classification, image, translation  # noqa: E402,F401

__all__ = [
    "SIZES", "SOURCES", "WORKLOADS", "HubUnavailableError", "Workload", "build_workload",
    "validate_workload_spec",
]


def warm_tokenizers(sizes=("tiny", "small"), data_dir=None) -> list[tuple[str, int]]:
    """Trains (or finds cached) the local tokenizers that these size presets use.

    Run by `python -m pipeline setup`, so that concurrent trials and the tests find them cached
    instead of each paying the first-use training (the Unigram one takes ~20 s on 2 cores).
    """
    from pipeline import data

    done = []
    for module in (causal_lm, translation, classification):
        for size in sizes:
            vocab = module.PRESETS[size]["vocab_size"]
            data.get_tokenizer(module.LOCAL_TOKENIZER, vocab_size=vocab, data_dir=data_dir)
            done.append((module.LOCAL_TOKENIZER, vocab))
    return done
