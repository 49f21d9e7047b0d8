"""Local tokenizers: documented special ids, round trips, determinism, and the on-disk cache."""

import json
import threading

import pytest
from tokenizers import normalizers, pre_tokenizers

from pipeline.data import DataMissingError, get_tokenizer, load_code_files
from pipeline.data import vocab, vocab_train
from pipeline.data.vocab_train import train_tokenizer

# Small slices of the real train texts keep training to a second or two per kind.
SLICE = {"code_bpe": 40, "enfr_unigram": 3000, "reviews_wordpiece": 600}


@pytest.fixture(scope="session")
def slices(data_dir):
    return {kind: vocab.training_texts(kind, data_dir)[:n] for kind, n in SLICE.items()}


@pytest.fixture(scope="session")
def trained(slices):
    return {kind: train_tokenizer(kind, texts, 512) for kind, texts in slices.items()}


def _alphabet(texts):
    return set("".join(texts))


def test_special_token_ids(trained):
    bpe, uni, wp = trained["code_bpe"], trained["enfr_unigram"], trained["reviews_wordpiece"]
    assert (bpe.eos_token_id, bpe.bos_token_id, bpe.pad_token_id) == (0, 0, 1)
    assert bpe.convert_ids_to_tokens([0, 1]) == ["<|endoftext|>", "<|pad|>"]
    assert (uni.pad_token_id, uni.eos_token_id, uni.unk_token_id) == (0, 1, 2)  # as T5
    assert (wp.pad_token_id, wp.cls_token_id, wp.sep_token_id, wp.unk_token_id,
            wp.mask_token_id) == (0, 1, 2, 3, 4)
    assert all(len(t) == 512 for t in trained.values())


def test_code_bpe_round_trips_any_text(trained, data_dir):
    tok = trained["code_bpe"]
    for text in load_code_files("test", data_dir)[:5] + ["héllo ✓ 🚀\t\r\n  x"]:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
        assert 0 not in ids and 1 not in ids  # no special token added or needed
    assert len(tok("def f(self):\n    return None\n")["input_ids"]) < 15  # merges were learnt


def test_enfr_unigram_round_trips_and_appends_eos(trained, slices, data_dir):
    tok = trained["enfr_unigram"]
    seen = _alphabet(slices["enfr_unigram"])
    pairs = [p for p in vocab.load_translation_pairs("test", data_dir)[:300]
             if _alphabet(p) <= seen]
    assert len(pairs) > 200
    for en, fr in pairs:
        batch = tok(en, text_target=fr)
        assert batch["input_ids"][-1] == 1 and batch["labels"][-1] == 1
        assert tok.decode(batch["input_ids"], skip_special_tokens=True) == en
        assert tok.decode(batch["labels"], skip_special_tokens=True) == fr
        assert 2 not in batch["input_ids"] + batch["labels"]  # no <unk>


def test_reviews_wordpiece_pieces_rebuild_the_bert_words(trained, slices, data_dir):
    tok = trained["reviews_wordpiece"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    seen = _alphabet(normalizer.normalize_str(t) for t in slices["reviews_wordpiece"])
    texts = [t for t, _ in vocab.load_reviews("snippets", "test", data_dir)[:200]
             if _alphabet(normalizer.normalize_str(t)) <= seen]
    assert len(texts) > 150
    for text in texts:
        ids = tok(text)["input_ids"]
        assert ids[0] == 1 and ids[-1] == 2 and 3 not in ids
        words = []
        for piece in tok.convert_ids_to_tokens(ids[1:-1]):
            if piece.startswith("##"):
                words[-1] += piece[2:]
            else:
                words.append(piece)
        assert words == [w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text))]
    padded = tok(["a good film", "bad"], padding=True)["input_ids"]
    assert padded[1][-1] == 0


def _definition(tokenizer):
    """The trained tokenizer minus padding/truncation state (calls with padding=True set it)."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    return {k: v for k, v in state.items() if k not in ("padding", "truncation")}


def test_training_is_deterministic(slices, trained):
    # Rust hash maps are seeded afresh per map, so two trainings in one process already
    # differed (ids of WordPiece's ## pieces, order of Unigram's pieces) before the
    # canonicalisation in vocab_train.
    for kind, texts in slices.items():
        assert _definition(train_tokenizer(kind, texts, 512)) == _definition(trained[kind]), kind


def test_required_chars_are_renumbered_by_character():
    base = [("▁de", -3.0), ("es", -9.5)]
    grid = [(c, -10.0 + 1e-4 * k) for k, c in enumerate("zqb")]
    other = [(c, -10.0 + 1e-4 * k) for k, c in enumerate("bzq")]
    fixed = vocab_train._canonical_required_chars(base + grid)
    assert fixed == vocab_train._canonical_required_chars(base + other)
    assert fixed == base + [("b", -10.0), ("q", -10.0 + 1e-4), ("z", -10.0 + 2e-4)]


def test_get_tokenizer_trains_once_under_a_lock_and_caches(copy_source, monkeypatch):
    root = copy_source("stdlib_code")
    real_texts, real_train = vocab.training_texts, vocab.train_tokenizer
    calls = []
    monkeypatch.setattr(vocab, "training_texts", lambda kind, d: real_texts(kind, d)[:30])

    def counting_train(*args):
        calls.append(args[0])
        return real_train(*args)

    monkeypatch.setattr(vocab, "train_tokenizer", counting_train)
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        get_tokenizer("code_bpe", vocab_size=600, data_dir=root))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["code_bpe"] and len(results) == 2
    assert results[0].get_vocab() == results[1].get_vocab()
    cached = get_tokenizer("code_bpe", vocab_size=600, data_dir=root)
    assert calls == ["code_bpe"] and cached.get_vocab() == results[0].get_vocab()
    assert (root / "tokenizers" / "code_bpe-600" / "tokenizer.json").is_file()
    assert cached.pad_token_id == 1 and cached.eos_token_id == 0  # specials survive the reload
    # A rebuilt corpus (new checksums in its manifest) makes the cached tokenizer stale.
    manifest_path = root / "stdlib_code" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["code.parquet"]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    get_tokenizer("code_bpe", vocab_size=600, data_dir=root)
    assert calls == ["code_bpe", "code_bpe"]


def test_get_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="kind: expected one of code_bpe"):
        get_tokenizer("t5", vocab_size=512, data_dir=tmp_path)
    for bad in (100, 512.0, True, 10**6):
        with pytest.raises(ValueError, match="vocab_size"):
            get_tokenizer("code_bpe", vocab_size=bad, data_dir=tmp_path)
    with pytest.raises(DataMissingError, match="--only bible_en_fr"):
        get_tokenizer("enfr_unigram", vocab_size=512, data_dir=tmp_path)
