"""Read prepared sources from the cache (never prepare them: a missing source is an error)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.data.cache import DataMissingError, check_source, resolve_data_dir, setup_hint
from pipeline.data.sources import SOURCES_BY_NAME

SPLITS = ("train", "test")
REVIEW_CORPORA = {"polarity": ("polarity_reviews", "reviews.parquet"),
                  "polarity_sentences": ("polarity_reviews", "sentences.parquet"),
                  "snippets": ("review_snippets", "snippets.parquet")}


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")


def source_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder of a prepared source; DataMissingError if absent or incomplete.

    Compares the manifest and file sizes only (cheap, once per trial); sha256 is the setup
    command's job.
    """
    path = resolve_data_dir(data_dir) / name
    problem = check_source(path, source_version=SOURCES_BY_NAME[name].version, checksums=False)
    if problem is not None:
        raise DataMissingError(f"data source {name!r} is not prepared in {path.parent} "
                               f"({problem}): run {setup_hint(name)}")
    return path


def _rows(name: str, file: str, split: str, columns: list[str], data_dir) -> dict[str, list]:
    check_split(split)
    table = pq.read_table(source_dir(name, data_dir) / file, columns=columns + ["split"])
    table = table.filter(pc.equal(table["split"], split))  # keeps the stored row order
    return {c: table.column(c).to_pylist() for c in columns}


def load_code_files(split: str, data_dir: str | os.PathLike | None = None) -> list[str]:
    """Texts of the stdlib .py files in `split` (sorted by path)."""
    return _rows("stdlib_code", "code.parquet", split, ["text"], data_dir)["text"]


def load_translation_pairs(split: str, data_dir: str | os.PathLike | None = None
                           ) -> list[tuple[str, str]]:
    """Cleaned (English WEB, French Segond) verse pairs in `split`, in canonical verse order."""
    rows = _rows("bible_en_fr", "pairs.parquet", split, ["en", "fr"], data_dir)
    return list(zip(rows["en"], rows["fr"]))


def load_reviews(corpus: str, split: str, data_dir: str | os.PathLike | None = None
                 ) -> list[tuple[str, int]]:
    """(text, label) with label 1 = positive, 0 = negative.

    corpus: "polarity" (1,500 full reviews), "snippets" (10,605 rated snippets; score > 0 is
    positive) or "polarity_sentences" (4,000 sentences shipped beside the reviews).
    """
    if corpus not in REVIEW_CORPORA:
        raise ValueError(f"corpus: expected one of {', '.join(REVIEW_CORPORA)}, got {corpus!r}")
    name, file = REVIEW_CORPORA[corpus]
    rows = _rows(name, file, split, ["text", "label"], data_dir)
    return list(zip(rows["text"], map(int, rows["label"])))


def load_fashion_mnist(split: str, data_dir: str | os.PathLike | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 in 0..9; train N = 60,000, test 10,000."""
    check_split(split)
    path = source_dir("fashion_mnist", data_dir)
    images = np.load(path / f"{split}_images.npy")
    labels = np.load(path / f"{split}_labels.npy").astype(np.int64)
    return images, labels


def minilm_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Folder for `BertForSequenceClassification.from_pretrained(dir, num_labels=2)` (offline)."""
    return source_dir("minilm", data_dir) / "model"
