"""Translation workload: T5 English -> French (Bible verse pairs locally, opus_books on the hub)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

import pipeline.data as data
from pipeline.workloads.base import (
    DTYPES, IGNORE_INDEX, Workload, count_targets, fixed_subset, seeded, token_cross_entropy,
    trim_padding,
)
from pipeline.workloads.definitions import WORKLOADS
from pipeline.workloads.hub import HUB_MODELS, from_hub
from pipeline.workloads.precision import make_float64_exact

# T5's task prefix, as in the HF translation example the paper's t5-small runs follow.
PREFIX = "translate English to French: "
DEFINITION = WORKLOADS["translation"]  # presets, spec keys and facts (pipeline.workloads.definitions)
# Model dimensions; paper = t5-small's config.json (dropout 0.1 as published: measurements run
# the model in eval mode). Tiny (~0.2M parameters) and small train without dropout.
DIMS: dict[str, dict[str, Any]] = {
    "tiny": {"d_model": 64, "d_ff": 128, "d_kv": 32, "num_layers": 2, "num_decoder_layers": 2,
             "num_heads": 2, "dropout_rate": 0.0},
    "small": {"d_model": 256, "d_ff": 1024, "d_kv": 64, "num_layers": 4,
              "num_decoder_layers": 4, "num_heads": 4, "dropout_rate": 0.0},
    "paper": {"d_model": 512, "d_ff": 2048, "d_kv": 64, "num_layers": 6, "num_decoder_layers": 6,
              "num_heads": 8, "dropout_rate": 0.1},
}
LOCAL_TOKENIZER = DEFINITION.local_tokenizer
# Encoder padding follows attention_mask; decoder padding follows decoder_attention_mask.
PADDING_GROUPS = {"attention_mask": ("input_ids",),
                  "decoder_attention_mask": ("decoder_input_ids", "labels")}


def build(spec: Mapping[str, Any], *, seed: int, device: torch.device) -> Workload:
    tokenizer = _tokenizer(spec)
    encode = functools.partial(_encode, tokenizer=tokenizer, seq_len=spec["seq_len"])
    train, test = encode(_pairs(spec, "train")), encode(_pairs(spec, "test"))
    with seeded(seed, "model-init"):
        model = _model(spec, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    model = make_float64_exact(model).to(device=device, dtype=DTYPES[spec["dtype"]])
    return Workload(
        name=DEFINITION.name, is_transformer=DEFINITION.is_transformer, model=model,
        train_examples=train, test_examples=test,
        collate=functools.partial(trim_padding, groups=PADDING_GROUPS),
        criterion=functools.partial(token_cross_entropy, shift=False),
        target_count=functools.partial(count_targets, shift=False),
        batch_size=spec["batch_size"], test_batch_size=spec["test_batch_size"],
        seed=seed, device=device,
    )


def _pairs(spec: Mapping[str, Any], split: str) -> list[tuple[str, str]]:
    if spec["source"] == "hub":
        pairs = data.load_hub_translation_pairs(split)  # raises HubUnavailableError offline
    else:
        pairs = data.load_translation_pairs(split, data_dir=spec["data_dir"])
    return fixed_subset(pairs, spec[f"max_{split}_examples"])


def _tokenizer(spec: Mapping[str, Any]):
    if spec["source"] == "hub":
        tokenizer = from_hub("translation", f"the {HUB_MODELS['translation']} tokenizer",
                             "a Unigram tokenizer trained on the Bible pairs",
                             lambda: AutoTokenizer.from_pretrained(HUB_MODELS["translation"]))
    else:
        tokenizer = data.get_tokenizer(LOCAL_TOKENIZER, vocab_size=spec["vocab_size"],
                                       data_dir=spec["data_dir"])
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError("translation: the tokenizer needs an end-of-sequence and a padding token")
    return tokenizer


def _encode(pairs: Sequence[tuple[str, str]], *, tokenizer,
            seq_len: int) -> dict[str, torch.Tensor]:
    """Token rows of the encoder inputs, decoder inputs and labels, right-padded to the longest.

    Each side is cut to seq_len - 1 tokens and ends with </s>, as T5 was trained. The decoder
    input is the label shifted right behind the start token (T5's `_shift_right`: the pad id).
    Padding has attention mask 0 and, in the labels, IGNORE_INDEX, so it never enters the loss.
    """
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    sources = tokenizer([PREFIX + en for en, _ in pairs], add_special_tokens=False)["input_ids"]
    targets = tokenizer([fr for _, fr in pairs], add_special_tokens=False)["input_ids"]
    sources = [ids[: seq_len - 1] + [eos] for ids in sources]
    targets = [ids[: seq_len - 1] + [eos] for ids in targets]
    return {
        "input_ids": _pad(sources, pad),
        "attention_mask": _pad([[1] * len(s) for s in sources], 0),
        "decoder_input_ids": _pad([[pad] + t[:-1] for t in targets], pad),
        "decoder_attention_mask": _pad([[1] * len(t) for t in targets], 0),
        "labels": _pad(targets, IGNORE_INDEX),
    }


def _pad(rows: Sequence[list[int]], value: int) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), value, dtype=torch.int64)  # (N, T)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
    return out


def _model(spec: Mapping[str, Any], vocab: int, pad: int, eos: int) -> T5ForConditionalGeneration:
    if spec["pretrained"]:
        model = from_hub("translation", f"the {HUB_MODELS['translation']} weights",
                         "T5 from a config, trained from scratch",
                         lambda: T5ForConditionalGeneration.from_pretrained(
                             HUB_MODELS["translation"], attn_implementation="eager"))
        model.config.use_cache = False
        return model.train()
    config = T5Config(
        vocab_size=vocab, pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad,
        use_cache=False,
        attn_implementation="eager",  # eager: double backward and forward-mode AD (docs/data.md)
        **{"feed_forward_proj": "relu", "tie_word_embeddings": True,  # as t5-small
           **DIMS[spec["size"]], **spec["model"]},
    )
    return T5ForConditionalGeneration(config).train()

