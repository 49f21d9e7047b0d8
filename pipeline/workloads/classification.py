"""Sentiment classification workload: BERT (from a config, or the pretrained MiniLM) on reviews."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

import pipeline.data as data
from pipeline.workloads.base import (
    DTYPES, Workload, count_targets, fixed_subset, seeded, token_cross_entropy, trim_padding,
)
from pipeline.workloads.definitions import WORKLOADS
from pipeline.workloads.hub import HUB_MODELS, from_hub, quiet_loading

DEFINITION = WORKLOADS["classification"]  # presets, corpora, facts (pipeline.workloads.definitions)
NUM_LABELS = DEFINITION.num_classes
MINILM_MAX_POSITIONS = 512
# Model dimensions (from a config); paper = bert-base-uncased (dropout 0.1 as published:
# measurements run the model in eval mode). Tiny (~0.15M parameters) and small: no dropout.
DIMS: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 128, "hidden_dropout_prob": 0.0,
             "attention_probs_dropout_prob": 0.0},
    "small": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
              "intermediate_size": 1024, "hidden_dropout_prob": 0.0,
              "attention_probs_dropout_prob": 0.0},
    "paper": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
              "intermediate_size": 3072, "hidden_dropout_prob": 0.1,
              "attention_probs_dropout_prob": 0.1},
}
LOCAL_TOKENIZER = DEFINITION.local_tokenizer


def build(spec: Mapping[str, Any], *, seed: int, device: torch.device) -> Workload:
    if spec["pretrained"] and spec["source"] == "local" and spec["seq_len"] > MINILM_MAX_POSITIONS:
        raise ValueError(f"workload.seq_len: the pretrained MiniLM takes at most "
                         f"{MINILM_MAX_POSITIONS} tokens, got {spec['seq_len']}")
    tokenizer = _tokenizer(spec)
    encode = functools.partial(_encode, tokenizer=tokenizer, seq_len=spec["seq_len"])
    train, test = encode(_reviews(spec, "train")), encode(_reviews(spec, "test"))
    with seeded(seed, "model-init"):  # also seeds the fresh classifier head of a checkpoint
        model = _model(spec, len(tokenizer), tokenizer.pad_token_id)
    model = model.to(device=device, dtype=DTYPES[spec["dtype"]])
    return Workload(
        name=DEFINITION.name, is_transformer=DEFINITION.is_transformer, model=model,
        train_examples=train, test_examples=test,
        collate=functools.partial(trim_padding, groups={"attention_mask": ("input_ids",)}),
        criterion=functools.partial(token_cross_entropy, shift=False),  # (B, 2) logits, (B,) labels
        target_count=functools.partial(count_targets, shift=False),
        batch_size=spec["batch_size"], test_batch_size=spec["test_batch_size"],
        seed=seed, device=device,
    )


def _reviews(spec: Mapping[str, Any], split: str) -> list[tuple[str, int]]:
    if spec["source"] == "hub":
        reviews = data.load_hub_reviews(split)  # raises HubUnavailableError offline
    else:
        reviews = data.load_reviews(spec["corpus"], split, data_dir=spec["data_dir"])
    return fixed_subset(reviews, spec[f"max_{split}_examples"])


def _tokenizer(spec: Mapping[str, Any]):
    if spec["source"] == "hub":
        return from_hub("classification", f"the {HUB_MODELS['classification']} tokenizer",
                        "a WordPiece tokenizer trained on the reviews",
                        lambda: AutoTokenizer.from_pretrained(HUB_MODELS["classification"]))
    if spec["pretrained"]:
        # MiniLM ships the real bert-base-uncased WordPiece vocabulary (docs/data.md, 'Sources').
        return AutoTokenizer.from_pretrained(data.minilm_dir(spec["data_dir"]),
                                             local_files_only=True)
    return data.get_tokenizer(LOCAL_TOKENIZER, vocab_size=spec["vocab_size"],
                              data_dir=spec["data_dir"])


def _encode(reviews: Sequence[tuple[str, int]], *, tokenizer,
            seq_len: int) -> dict[str, torch.Tensor]:
    """[CLS] review [SEP], cut to seq_len tokens, right-padded to the longest (attention mask 0).

    Only the model's inputs and "labels": the Gauss-Newton analysis feeds a batch without its
    labels straight to the model. token_type_ids are left out (all zero, BERT's default).
    """
    enc = tokenizer([text for text, _ in reviews], truncation=True, max_length=seq_len,
                    padding="longest", return_tensors="pt")
    labels = torch.tensor([label for _, label in reviews], dtype=torch.int64)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": labels}


def _model(spec: Mapping[str, Any], vocab: int, pad: int) -> BertForSequenceClassification:
    if spec["pretrained"]:
        if spec["source"] == "hub":
            model = from_hub("classification", f"the {HUB_MODELS['classification']} weights",
                             "with pretrained: true, the MiniLM BERT",
                             lambda: BertForSequenceClassification.from_pretrained(
                                 HUB_MODELS["classification"], num_labels=NUM_LABELS,
                                 attn_implementation="eager"))
        else:
            with quiet_loading():
                model = BertForSequenceClassification.from_pretrained(
                    data.minilm_dir(spec["data_dir"]), num_labels=NUM_LABELS,
                    attn_implementation="eager",
                    local_files_only=True)
        return model.train()
    config = BertConfig(
        vocab_size=vocab, pad_token_id=pad, num_labels=NUM_LABELS,
        attn_implementation="eager",  # eager: double backward and forward-mode AD (docs/data.md)
        **{"max_position_embeddings": _positions(spec), **DIMS[spec["size"]], **spec["model"]},
    )
    return BertForSequenceClassification(config).train()


def _positions(spec: Mapping[str, Any]) -> int:
    """bert-base's 512 positions at paper size; tiny/small get exactly the positions they use.

    Unused position rows have zero gradient: with the tiny model's untied word embeddings they
    made ~40% of all coordinates zero, so Adam's clip at k = 0.5 (tau = the median |g|) cut
    nearly everything (the paper's BERT uses all 512 positions).
    """
    return max(512, spec["seq_len"]) if spec["size"] == "paper" else spec["seq_len"]

