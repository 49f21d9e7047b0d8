"""Causal LM workload: GPT-Neo on Python source code (stdlib locally, the-stack-smol on the hub)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, GPTNeoConfig, GPTNeoForCausalLM

import pipeline.data as data
from pipeline.workloads.base import (
    DTYPES, Workload, count_targets, fixed_subset, seeded, token_cross_entropy,
)
from pipeline.workloads.definitions import WORKLOADS
from pipeline.workloads.hub import HUB_MODELS, from_hub
from pipeline.workloads.precision import make_float64_exact

DEFINITION = WORKLOADS["causal_lm"]  # presets, spec keys and facts (pipeline.workloads.definitions)
# Model dimensions; paper = EleutherAI/gpt-neo-125M (its config.json: 12 layers of alternating
# global/local attention, window 256, no dropout). Tiny has ~0.14M parameters.
DIMS: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "window_size": 32,
             "max_position_embeddings": 64},
    "small": {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "window_size": 64,
              "max_position_embeddings": 128},
    "paper": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "window_size": 256,
              "max_position_embeddings": 2048},
}
LOCAL_TOKENIZER = DEFINITION.local_tokenizer
DROPOUT_KEYS = ("embed_dropout", "attention_dropout", "resid_dropout")


def build(spec: Mapping[str, Any], *, seed: int, device: torch.device) -> Workload:
    tokenizer = _tokenizer(spec)
    eos = tokenizer.eos_token_id
    train = _chunks(_texts(spec, "train"), tokenizer, spec["seq_len"])
    test = _chunks(_texts(spec, "test"), tokenizer, spec["seq_len"])
    with seeded(seed, "model-init"):
        model = _model(spec, len(tokenizer), eos, tokenizer.pad_token_id)
    model = make_float64_exact(model).to(device=device, dtype=DTYPES[spec["dtype"]])
    return Workload(
        name=DEFINITION.name, is_transformer=DEFINITION.is_transformer, model=model,
        train_examples=train, test_examples=test, collate=lambda batch: batch,
        criterion=functools.partial(token_cross_entropy, shift=True),
        target_count=functools.partial(count_targets, shift=True),
        batch_size=spec["batch_size"], test_batch_size=spec["test_batch_size"],
        seed=seed, device=device,
    )


def _texts(spec: Mapping[str, Any], split: str) -> list[str]:
    limit = spec[f"max_{split}_examples"]
    if spec["source"] == "hub":
        texts = data.load_hub_code_files(split)  # raises HubUnavailableError offline
    else:
        texts = data.load_code_files(split, data_dir=spec["data_dir"])
    return fixed_subset(texts, limit)


def _tokenizer(spec: Mapping[str, Any]):
    if spec["source"] == "hub":
        tokenizer = from_hub("causal_lm", f"the {HUB_MODELS['causal_lm']} tokenizer",
                             "a byte-level BPE trained on the stdlib code",
                             lambda: AutoTokenizer.from_pretrained(HUB_MODELS["causal_lm"]))
    else:
        tokenizer = data.get_tokenizer(LOCAL_TOKENIZER, vocab_size=spec["vocab_size"],
                                       data_dir=spec["data_dir"])
    if tokenizer.eos_token_id is None:
        raise ValueError("causal_lm: the tokenizer has no end-of-text token to separate files")
    return tokenizer


def _chunks(texts: list[str], tokenizer, seq_len: int) -> dict[str, torch.Tensor]:
    """Concatenate the files, each followed by end-of-text, and cut into seq_len-token rows.

    This is run_clm's "group_texts": no padding at all, the ragged tail is dropped. The labels
    are the inputs (the loss shifts them); the attention mask is all ones but kept so that
    callers may pad (padding then carries mask 0 and label -100).
    """
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    stream = np.fromiter((t for doc in ids for t in (*doc, eos)), dtype=np.int64)
    rows = len(stream) // seq_len
    if rows == 0:
        raise ValueError(f"workload.seq_len: {seq_len} exceeds the corpus's {len(stream)} tokens")
    input_ids = torch.from_numpy(stream[: rows * seq_len].reshape(rows, seq_len))  # (N, T)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "labels": input_ids.clone()}


def _model(spec: Mapping[str, Any], vocab: int, eos: int, pad: int | None) -> GPTNeoForCausalLM:
    if spec["pretrained"]:
        model = from_hub("causal_lm", f"the {HUB_MODELS['causal_lm']} weights",
                         "GPT-Neo from a config, trained from scratch",
                         lambda: GPTNeoForCausalLM.from_pretrained(HUB_MODELS["causal_lm"],
                                                                   attn_implementation="eager"))
        model.config.use_cache = False
        return model.train()
    dims = {**DIMS[spec["size"]], **spec["model"]}
    dims["max_position_embeddings"] = max(dims["max_position_embeddings"], spec["seq_len"])
    if "attention_types" not in spec["model"]:
        # Alternate global and local layers as GPT-Neo-125M does, for any layer count.
        pairs, odd = divmod(dims["num_layers"], 2)
        types = [[["global", "local"], pairs]] + ([[["global"], 1]] if odd else [])
        dims["attention_types"] = [t for t in types if t[1] > 0]
    config = GPTNeoConfig(
        vocab_size=vocab,
        # GPT-Neo's default ids (50256) lie outside a small local vocabulary (docs/data.md, 'Pitfalls').
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos if pad is None else pad,
        use_cache=False, attn_implementation="eager",  # eager: double backward (docs/data.md)
        **{**dict.fromkeys(DROPOUT_KEYS, 0.0), **dims},
    )
    return GPTNeoForCausalLM(config).train()

