"""`source: hub`: one-line failures offline, and the hub path on local fixtures of the hub schema.

The fixtures replace only the downloads (datasets.load_dataset and from_pretrained); the rows go
through pipeline.data's real mapping and the workloads' real encoding.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (AutoTokenizer, BertForSequenceClassification, GPTNeoConfig,
                          GPTNeoForCausalLM, T5Config, T5ForConditionalGeneration)

import pipeline.data as data
from pipeline.workloads import build_workload
from pipeline.workloads.image import CIFAR_MEAN, CIFAR_STD
from pipeline.workloads.translation import PREFIX

OFFLINE_SCRIPT = """
import json
from pipeline.workloads import build_workload
for spec in ({"name": "causal_lm"}, {"name": "translation"}, {"name": "classification"},
             {"name": "image"}, {"name": "classification", "pretrained": True}):
    try:
        build_workload({**spec, "source": "hub"}, seed=0, device="cpu")
        print(json.dumps(["built", ""]))
    except Exception as exc:
        print(json.dumps([type(exc).__name__, str(exc)]))
"""


def test_offline_hub_sources_fail_in_one_line_naming_source_local(tmp_path):
    # A fresh process: huggingface_hub reads HF_HUB_OFFLINE once, at import. An empty HF_HOME
    # makes sure nothing comes from a cache.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], capture_output=True, text=True,
                         env=env, timeout=300)
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("[")]
    assert len(results) == 5, out.stderr[-2000:]
    for kind, message in results:
        assert kind == "HubUnavailableError"
        assert "\n" not in message and "`source: local`" in message


@pytest.fixture
def hub(monkeypatch):
    """Record what the hub was asked for and answer from local fixtures of the same schema."""
    asked = {"datasets": [], "tokenizers": [], "models": []}
    original_tokenizer = AutoTokenizer.from_pretrained
    original_bert = BertForSequenceClassification.from_pretrained
    tables = {}

    def load_dataset(path, **kwargs):
        asked["datasets"].append((path, kwargs))
        return tables[path]

    def tokenizer(repo, **kwargs):
        asked["tokenizers"].append(repo)
        if repo == "EleutherAI/gpt-neo-125M":  # GPT-2's BPE: no padding token
            tok = data.get_tokenizer("code_bpe", vocab_size=512)
            tok.pad_token = None
            return tok
        if repo == "t5-small":  # same special ids as T5's: <pad> 0, </s> 1
            return data.get_tokenizer("enfr_unigram", vocab_size=512)
        return original_tokenizer(data.minilm_dir())  # bert-base-uncased's own vocabulary

    def model(cls, build):
        def from_pretrained(repo, **kwargs):
            asked["models"].append((repo, kwargs.get("attn_implementation")))
            return build(**kwargs)
        monkeypatch.setattr(cls, "from_pretrained", from_pretrained)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", tokenizer)
    model(GPTNeoForCausalLM, lambda **kw: GPTNeoForCausalLM(GPTNeoConfig(
        vocab_size=512, hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=64,
        attention_types=[[["global", "local"], 1]], window_size=16, use_cache=True, **kw)))
    model(T5ForConditionalGeneration, lambda **kw: T5ForConditionalGeneration(T5Config(
        vocab_size=512, d_model=32, d_ff=64, d_kv=16, num_layers=1, num_heads=2, **kw)))
    model(BertForSequenceClassification, lambda **kw: original_bert(data.minilm_dir(), **kw))
    return asked, tables


def test_causal_lm_reads_the_stack_smol_python_and_gpt_neo(hub):
    asked, tables = hub
    texts = data.load_code_files("test")[:60]
    tables["bigcode/the-stack-smol"] = datasets.Dataset.from_dict(
        {"content": texts, "lang": ["Python"] * len(texts), "size": [len(t) for t in texts]})
    w = build_workload({"name": "causal_lm", "source": "hub", "pretrained": True, "batch_size": 2,
                        "seq_len": 32}, seed=0, device="cpu")
    assert asked["datasets"][0] == ("bigcode/the-stack-smol",
                                    {"data_dir": "data/python", "split": "train"})
    assert asked["tokenizers"] == ["EleutherAI/gpt-neo-125M"]
    assert asked["models"] == [("EleutherAI/gpt-neo-125M", "eager")]
    assert w.model.config.use_cache is False
    assert w.test_batch["input_ids"].shape == (2, 32) and torch.isfinite(w.loss(w.test_batch))


def test_translation_reads_opus_books_and_t5_small(hub):
    asked, tables = hub
    pairs = data.load_translation_pairs("train")[:300]
    tables["opus_books"] = datasets.Dataset.from_dict(
        {"id": [str(i) for i in range(len(pairs))],
         "translation": [{"en": en, "fr": fr} for en, fr in pairs]})
    w = build_workload({"name": "translation", "source": "hub", "pretrained": True, "batch_size": 4,
                        "max_test_examples": None}, seed=0, device="cpu")
    assert asked["datasets"][0] == ("opus_books", {"name": "en-fr", "split": "train"})
    assert asked["tokenizers"] == ["t5-small"] and asked["models"] == [("t5-small", "eager")]
    tokenizer = data.get_tokenizer("enfr_unigram", vocab_size=512)
    prefix = tokenizer(PREFIX.strip(), add_special_tokens=False)["input_ids"]
    assert all(row[: len(prefix)] == prefix for row in w.test_batch["input_ids"].tolist())
    assert torch.isfinite(w.loss(w.test_batch))


def test_classification_reads_imdb_and_bert_base_uncased(hub):
    asked, tables = hub
    reviews = data.load_reviews("snippets", "test")[:64]
    tables["imdb"] = datasets.Dataset.from_dict(  # the same rows serve both splits
        {"text": [t for t, _ in reviews], "label": [label for _, label in reviews]})
    w = build_workload({"name": "classification", "source": "hub", "pretrained": True,
                        "batch_size": 4, "seq_len": 32}, seed=0, device="cpu")
    assert [path for path, _ in asked["datasets"]] == ["imdb", "imdb"]
    assert {kw["split"] for _, kw in asked["datasets"]} == {"train", "test"}
    assert asked["tokenizers"] == ["bert-base-uncased"]
    assert asked["models"] == [("bert-base-uncased", "eager")]
    assert int(w.test_batch["input_ids"][0, 0]) == 101  # bert-base-uncased's [CLS]
    assert set(w.test_batch["labels"].tolist()) <= {0, 1}


def test_image_reads_cifar10_with_per_channel_normalisation(hub):
    asked, tables = hub
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    tables["cifar10"] = datasets.Dataset.from_dict(
        {"img": [Image.fromarray(a) for a in arrays], "label": [i % 10 for i in range(24)]},
        features=datasets.Features({"img": datasets.Image(),
                                    "label": datasets.ClassLabel(num_classes=10)}))
    w = build_workload({"name": "image", "source": "hub", "batch_size": 4}, seed=0, device="cpu")
    assert [path for path, _ in asked["datasets"]] == ["cifar10", "cifar10"]
    mean = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(3, 1, 1)
    expected = [(torch.from_numpy(a).permute(2, 0, 1) / 255.0 - mean) / std for a in arrays]
    for pixels, label in zip(w.test_batch["pixel_values"], w.test_batch["labels"]):
        assert pixels.shape == (3, 32, 32)
        assert any(torch.allclose(pixels, e, atol=1e-5) for e in expected[int(label)::10])
