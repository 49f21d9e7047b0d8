"""The real prepared corpora: counts, cleaning, labels and deterministic disjoint splits."""

import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.data import (load_code_files, load_fashion_mnist, load_reviews,
                           load_translation_pairs, minilm_dir)
from pipeline.data.corpora import TEST_PERCENT, split_of


def _table(data_dir, name, file):
    return pq.read_table(data_dir / name / file).to_pydict()


def test_bible_pairs_are_all_aligned_verses_split_by_verse(data_dir):
    train = load_translation_pairs("train", data_dir)
    test = load_translation_pairs("test", data_dir)
    assert len(train) + len(test) == 31_102  # every verse of the shared numbering (docs/data.md)
    assert 0.07 < len(test) / 31_102 < 0.13  # TEST_PERCENT = 10
    rows = _table(data_dir, "bible_en_fr", "pairs.parquet")
    refs = [f"{b}:{c}:{v}" for b, c, v in zip(rows["book"], rows["chapter"], rows["verse"])]
    assert len(set(refs)) == len(refs)
    assert rows["split"] == [split_of(r) for r in refs]  # the split is a function of the verse
    assert load_translation_pairs("test", data_dir) == test


def test_bible_cleaning(data_dir):
    rows = _table(data_dir, "bible_en_fr", "pairs.parquet")
    assert not any("`" in t for t in rows["en"])
    assert not any(re.search(r"\(\d+:\d+[a-z]?\)", t) for t in rows["fr"])
    assert not any("[" in t or "]" in t for t in rows["en"] + rows["fr"])
    assert all(t == t.strip() and "  " not in t for t in rows["en"] + rows["fr"])
    verse = {(b, c, v): (en, fr) for b, c, v, en, fr in
             zip(rows["book"], rows["chapter"], rows["verse"], rows["en"], rows["fr"])}
    # Raw texts (sqlite): Gen 1:2 "God`s Spirit"; Ex 8:1 "(7:26) L'Éternel dit à Moïse: ...";
    # Lev 5:4 "... in one of these [things]."; Ps 9:1 "(9:1) Au chef ... David. (9:2) Je louerai".
    assert "God's Spirit was hovering" in verse[1, 1, 2][0]
    assert verse[2, 8, 1][1].startswith("L'Éternel dit à Moïse: Va vers Pharaon")
    assert verse[3, 5, 4][0].endswith("guilty in one of these things.")
    assert "Psaume de David. Je louerai l'Éternel" in verse[19, 9, 1][1]


def test_polarity_reviews_are_the_1500_long_reviews(data_dir):
    reviews = load_reviews("polarity", "train", data_dir) + load_reviews("polarity", "test",
                                                                         data_dir)
    assert len(reviews) == 1500
    assert sum(label for _, label in reviews) == 750
    assert {label for _, label in reviews} == {0, 1}
    assert np.mean([len(t.split()) for t, _ in reviews]) > 600  # full reviews, ~745 words
    texts = [t for t, _ in reviews]
    assert not any("\ufeff" in t for t in texts)  # the CSV's byte-order mark is gone
    assert any(t.startswith("films adapted from comic books have had plenty of success")
               for t in texts)
    sentences = (load_reviews("polarity_sentences", "train", data_dir)
                 + load_reviews("polarity_sentences", "test", data_dir))
    assert len(sentences) == 4000 and sum(label for _, label in sentences) == 2000
    assert np.mean([len(t.split()) for t, _ in sentences]) < 40


def test_review_snippets_labels_split_at_zero(data_dir):
    rows = _table(data_dir, "review_snippets", "snippets.parquet")
    assert len(rows["id"]) == 10_605 and len(set(rows["id"])) == 10_605
    assert min(rows["score"]) >= -4 and max(rows["score"]) <= 4
    assert rows["label"] == [int(s > 0) for s in rows["score"]]
    # Counted from the raw file: 5,242 positive, 37 exactly 0 (negative), 5,326 negative.
    assert sum(rows["label"]) == 5242 and rows["score"].count(0.0) == 37
    by_id = dict(zip(rows["id"], rows["text"]))
    assert by_id[3] == "Effective but too tepid biopic"
    n = len(load_reviews("snippets", "train", data_dir)) + len(load_reviews("snippets", "test",
                                                                            data_dir))
    assert n == 10_605


def test_code_files_split_by_file(data_dir):
    rows = _table(data_dir, "stdlib_code", "code.parquet")
    paths = rows["path"]
    assert len(paths) > 500 and len(set(paths)) == len(paths)
    assert rows["split"] == [split_of(p) for p in paths]
    assert not any(p.startswith(("test/", "idlelib/", "site-packages/")) or "/test/" in p
                   or "/tests/" in p for p in paths)
    assert {"json/__init__.py", "collections/__init__.py", "os.py"} <= set(paths)
    train, test = load_code_files("train", data_dir), load_code_files("test", data_dir)
    assert len(train) + len(test) == len(paths)
    assert abs(len(test) / len(paths) - TEST_PERCENT / 100) < 0.04
    assert not set(train) & set(test) - {""}  # no file text on both sides
    assert load_code_files("train", data_dir) == train


def test_fashion_mnist_arrays(data_dir):
    for split, n in (("train", 60_000), ("test", 10_000)):
        images, labels = load_fashion_mnist(split, data_dir)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        assert np.bincount(labels).tolist() == [n // 10] * 10  # balanced classes
        assert images.max() == 255 and images.min() == 0
    train, _ = load_fashion_mnist("train", data_dir)
    test, _ = load_fashion_mnist("test", data_dir)
    assert not np.array_equal(train[:10_000], test)


@pytest.mark.parametrize("bad", ["validation", "TRAIN"])
def test_bad_split_is_a_value_error(data_dir, bad):
    with pytest.raises(ValueError, match="split"):
        load_code_files(bad, data_dir)
    with pytest.raises(ValueError, match="corpus"):
        load_reviews("imdb", "train", data_dir)


def test_minilm_loads_offline(data_dir, monkeypatch):
    import huggingface_hub.constants
    from transformers import AutoTokenizer, BertForSequenceClassification, BertTokenizerFast

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    path = minilm_dir(data_dir)
    model = BertForSequenceClassification.from_pretrained(path, num_labels=2)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert 22_000_000 < sum(p.numel() for p in model.parameters()) < 23_500_000
    for cls in (AutoTokenizer, BertTokenizerFast):
        tokenizer = cls.from_pretrained(path)
        # bert-base-uncased ids: [CLS] hello world [SEP]
        assert tokenizer("Hello world")["input_ids"] == [101, 7592, 2088, 102]
    batch = tokenizer(["a fine film", "dull"], return_tensors="pt", padding=True)
    assert model(**batch).logits.shape == (2, 2)
