"""Tokenizers trained locally on the prepared corpora (the hub's T5/GPT-Neo ones are unreachable).

Three kinds, each wrapped as a transformers PreTrainedTokenizerFast and cached per vocab size
under <data_dir>/tokenizers/<kind>-<vocab_size>/:
  code_bpe           byte-level BPE (GPT-2/GPT-Neo style) on the stdlib code train split;
                     <|endoftext|> = 0 (bos = eos = unk), <|pad|> = 1; no special tokens added.
  enfr_unigram       Unigram (T5's SentencePiece model) on English + French train verses;
                     <pad> = 0, </s> = 1, <unk> = 2 as in T5; encoding appends </s>.
  reviews_wordpiece  WordPiece (BERT, lowercased) on the polarity + snippet train reviews;
                     [PAD] = 0, [CLS] = 1, [SEP] = 2, [UNK] = 3, [MASK] = 4; encoding gives
                     [CLS] text [SEP].
Training gives the same ids for the same corpus on every machine (pipeline.data.vocab_train); a
cached tokenizer whose corpus manifests have changed is retrained.
"""

from __future__ import annotations

import hashlib
import json
import os

from transformers import PreTrainedTokenizerFast

from pipeline.data.cache import (atomic_write_text, locked, read_manifest, replace_dir,
                                 resolve_data_dir, staging_dir)
from pipeline.data.loaders import load_code_files, load_reviews, load_translation_pairs, source_dir
from pipeline.data.vocab_train import TOKENIZER_KINDS, train_tokenizer, validate

TRAINING_VERSION = 2  # bump when a trainer's settings change: cached tokenizers are retrained
CORPUS_SOURCES = {"code_bpe": ("stdlib_code",), "enfr_unigram": ("bible_en_fr",),
                  "reviews_wordpiece": ("polarity_reviews", "review_snippets")}
FINGERPRINT = "fingerprint.json"

__all__ = ["TOKENIZER_KINDS", "get_tokenizer", "train_tokenizer", "training_texts"]


def training_texts(kind: str, data_dir=None) -> list[str]:
    """The train-split texts a tokenizer of `kind` learns from (never the test split)."""
    if kind == "code_bpe":
        return load_code_files("train", data_dir)
    if kind == "enfr_unigram":
        return [text for pair in load_translation_pairs("train", data_dir) for text in pair]
    return [text for corpus in ("polarity", "snippets")
            for text, _ in load_reviews(corpus, "train", data_dir)]


def corpus_fingerprint(kind: str, data_dir=None) -> str:
    """sha256 over the checksums of the corpus files a tokenizer learns from."""
    digest = hashlib.sha256(f"{kind}:{TRAINING_VERSION}".encode())
    for name in CORPUS_SOURCES[kind]:
        manifest = read_manifest(source_dir(name, data_dir))  # DataMissingError if absent
        digest.update(json.dumps(manifest["files"], sort_keys=True).encode())
    return digest.hexdigest()


def get_tokenizer(kind: str, *, vocab_size: int, data_dir: str | os.PathLike | None = None
                  ) -> PreTrainedTokenizerFast:
    """The cached tokenizer of `kind` and `vocab_size`, trained on first use.

    Concurrent trials wait on a file lock while one trains; the result lands by an atomic
    rename, so a reader never sees half a tokenizer.
    """
    validate(kind, vocab_size)
    root = resolve_data_dir(data_dir)
    fingerprint = corpus_fingerprint(kind, root)
    target = root / "tokenizers" / f"{kind}-{vocab_size}"

    def cached() -> PreTrainedTokenizerFast | None:
        try:
            stored = json.loads((target / FINGERPRINT).read_text())["fingerprint"]
        except (OSError, ValueError, KeyError):
            return None
        return PreTrainedTokenizerFast.from_pretrained(target) if stored == fingerprint else None

    tokenizer = cached()
    if tokenizer is not None:
        return tokenizer
    with locked(root, f"tokenizer-{kind}-{vocab_size}"):
        tokenizer = cached()  # another process may have trained it while we waited
        if tokenizer is not None:
            return tokenizer
        tokenizer = train_tokenizer(kind, training_texts(kind, root), vocab_size)
        target.parent.mkdir(parents=True, exist_ok=True)
        with staging_dir(target.parent, target.name) as stage:
            out = stage / "out"  # not the mkdtemp folder itself: that one is mode 0700
            tokenizer.save_pretrained(out)
            atomic_write_text(out / FINGERPRINT, json.dumps({"fingerprint": fingerprint}))
            replace_dir(out, target)
    return PreTrainedTokenizerFast.from_pretrained(target)
