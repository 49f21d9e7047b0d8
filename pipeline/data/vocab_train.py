"""Train the three local tokenizers (pure functions) with deterministic, machine-independent ids.

`tokenizers`' trainers iterate Rust hash maps whose seed is random per process: WordPiece
numbers its "##x" pieces in that order, and Unigram's EM sums floats in it (last-bit score
differences that reorder the pieces). Each node of a cluster trains its own cached copy, so
both are canonicalised here; byte-level BPE is already deterministic (integer counts, ties
broken by ids that are fixed up front).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers
from transformers import PreTrainedTokenizerFast

TOKENIZER_KINDS = ("code_bpe", "enfr_unigram", "reviews_wordpiece")
VOCAB_RANGE = (512, 65_536)
BPE_SPECIALS = ["<|endoftext|>", "<|pad|>"]
T5_SPECIALS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5
BERT_SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]  # ids 0..4
SCORE_DECIMALS = 8  # Unigram log-probabilities, rounded to absorb summation-order noise


def validate(kind: str, vocab_size: int) -> None:
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"kind: expected one of {', '.join(TOKENIZER_KINDS)}, got {kind!r}")
    lo, hi = VOCAB_RANGE
    is_int = isinstance(vocab_size, int) and not isinstance(vocab_size, bool)
    if not is_int or not lo <= vocab_size <= hi:
        raise ValueError(f"vocab_size: expected an int in [{lo}, {hi}], got {vocab_size!r}")


def train_tokenizer(kind: str, texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a tokenizer of `kind` on `texts` (no cache, no files); see pipeline.data.vocab."""
    validate(kind, vocab_size)
    trainer = {"code_bpe": _byte_level_bpe, "enfr_unigram": _unigram,
               "reviews_wordpiece": _wordpiece}[kind]
    return trainer(list(texts), vocab_size)


def _byte_level_bpe(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # All 256 byte symbols up front: any text encodes without an unknown token.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=BPE_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                   pad_token="<|pad|>")


def _unigram(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    # shrinking_factor 0.5 (SentencePiece: 0.75) nearly halves training time (47 s -> 26 s
    # for 1,024 pieces on a busy 2-core machine) for ~1.5% longer test-verse encodings.
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, show_progress=False,
                                      special_tokens=T5_SPECIALS, unk_token="<unk>",
                                      shrinking_factor=0.5)
    tok.train_from_iterator(texts, trainer)
    pieces = json.loads(tok.to_str())["model"]["vocab"]  # [[piece, log-prob], ...]
    if [p for p, _ in pieces[:3]] != T5_SPECIALS:
        raise RuntimeError(f"Unigram trainer put {pieces[:3]} first, expected {T5_SPECIALS}")
    # Canonical order: by rounded score, ties by the piece itself (the trained order breaks
    # ties by last-bit noise, and a piece's position is its embedding row).
    rest = [(p, round(s, SCORE_DECIMALS)) for p, s in _canonical_required_chars(pieces[3:])]
    rest.sort(key=lambda item: (-item[1], item[0]))
    canonical = Tokenizer(models.Unigram([(p, 0.0) for p in T5_SPECIALS] + rest, unk_id=2))
    canonical.normalizer = normalizers.NFKC()
    canonical.pre_tokenizer = pre_tokenizers.Metaspace()
    canonical.decoder = decoders.Metaspace()
    canonical.add_special_tokens(T5_SPECIALS)
    canonical.post_processor = processors.TemplateProcessing(  # T5 ends every sequence with </s>
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=canonical, pad_token="<pad>",
                                   eos_token="</s>", unk_token="<unk>")


REQUIRED_CHAR_STEP = 1e-4  # tokenizers' unigram trainer: min_score_penalty_delta


def _canonical_required_chars(pieces: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Renumber the characters that the trainer appends after pruning, by character.

    For coverage, the trainer adds every corpus character that pruning dropped, with score
    min + 1e-4 k, k counting in hash order. Those scores form the same grid in every order,
    starting at the vocabulary's minimum; give them out again in sorted-character order.
    """
    low = min(score for _, score in pieces)
    appended, kept = [], []
    for piece, score in pieces:
        k = (score - low) / REQUIRED_CHAR_STEP
        on_grid = len(piece) == 1 and abs(k - round(k)) < 1e-6
        (appended if on_grid else kept).append((piece, score))
    chars = sorted(p for p, _ in appended)
    return kept + [(c, low + REQUIRED_CHAR_STEP * k) for k, c in enumerate(chars)]


def _continuation_chars(texts: list[str]) -> list[str]:
    """Characters that can continue a word after BERT normalisation (not space or punctuation).

    BertNormalizer works character by character (clean-up, accent stripping, lowercasing), so
    normalising each distinct raw character gives the normalised texts' character set.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    chars = set().union(*(normalizer.normalize_str(c) for c in set("".join(texts))))
    return sorted(c for c in chars if [w for w, _ in pre.pre_tokenize_str("a" + c)] == ["a" + c])


def _wordpiece(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    # Listing the "##x" pieces as trainer specials numbers them in sorted order (the trainer
    # would number them in hash order); they become ordinary vocabulary entries below.
    continuation = ["##" + c for c in _continuation_chars(texts)]
    trained = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    trained.normalizer = normalizers.BertNormalizer(lowercase=True)
    trained.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, show_progress=False,
                                        special_tokens=BERT_SPECIALS + continuation)
    trained.train_from_iterator(texts, trainer)
    tok = Tokenizer(models.WordPiece(trained.get_vocab(with_added_tokens=False),
                                     unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(BERT_SPECIALS)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", unk_token="[UNK]", mask_token="[MASK]",
                                   model_max_length=512)
