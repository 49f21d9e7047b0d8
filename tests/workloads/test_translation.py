"""The translation workload: T5 on the English-French Bible pairs (real data, tiny size)."""

import pytest
import torch

import pipeline.data as data
from pipeline.workloads import build_workload
from pipeline.workloads.base import IGNORE_INDEX
from pipeline.workloads.translation import PREFIX

SEQ_LEN = 128  # long enough that verses differ in length: the batches carry padding
SPEC = {"name": "translation", "size": "tiny", "batch_size": 4, "seq_len": SEQ_LEN,
        "max_train_examples": 64, "max_test_examples": 32}


def build(seed=0, **extra):
    return build_workload({**SPEC, **extra}, seed=seed, device="cpu")


@pytest.fixture(scope="module")
def workload():
    return build()


def real(row, mask):
    return row[mask.bool()].tolist()


def test_builds(workload):
    model = workload.model
    assert workload.name == "translation" and workload.is_transformer
    assert model.config._attn_implementation == "eager"
    tokenizer = data.get_tokenizer("enfr_unigram", vocab_size=512)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.decoder_start_token_id == tokenizer.pad_token_id
    assert set(workload.test_batch) == {"input_ids", "attention_mask", "decoder_input_ids",
                                        "decoder_attention_mask", "labels"}
    assert 1e5 < sum(p.numel() for p in model.parameters()) < 1e6


def test_rows_are_the_prefixed_pairs_tokenized_independently():
    """Each test row matches some pair encoded by the tokenizer itself (its own </s>, its own
    truncation), and the target count is the sum of those unpadded label lengths."""
    w = build(max_test_examples=None)
    tokenizer = data.get_tokenizer("enfr_unigram", vocab_size=512)

    def encode(texts):
        return tokenizer(texts, truncation=True, max_length=SEQ_LEN)["input_ids"]

    pairs = data.load_translation_pairs("test")
    expected = {tuple(t): tuple(s) for s, t in zip(encode([PREFIX + en for en, _ in pairs]),
                                                   encode([fr for _, fr in pairs]))}
    batch, count = w.test_batch, 0
    for i in range(batch["labels"].shape[0]):
        target = real(batch["labels"][i], batch["decoder_attention_mask"][i])
        assert tuple(target) in expected
        source = real(batch["input_ids"][i], batch["attention_mask"][i])
        assert tuple(source) == expected[tuple(target)]
        decoder = real(batch["decoder_input_ids"][i], batch["decoder_attention_mask"][i])
        assert decoder == [tokenizer.pad_token_id] + target[:-1]  # shifted right
        count += len(target)
    assert w.target_count(batch) == count
    assert int((batch["labels"] == IGNORE_INDEX).sum()) == batch["labels"].numel() - count
    assert count < batch["labels"].numel()  # there is padding to get wrong
    assert int(batch["attention_mask"].sum()) < batch["attention_mask"].numel()


def test_loss_goes_down(train_a_few_steps):
    before, after = train_a_few_steps(build(seq_len=48), steps=8)  # short rows: cheaper
    assert after < before - 0.2


def test_test_batch_is_seeded(assert_test_batch_seeded):
    assert_test_batch_seeded(build)


def test_functional_loss(workload, assert_functional_loss_matches):
    assert_functional_loss_matches(workload)


def test_padding_never_enters_the_loss(workload):
    """More padding with junk ids gives exactly the token-weighted mean of the examples' losses
    computed one at a time with no padding at all."""
    model, batch = workload.model.eval(), workload.test_batch
    extra = 6
    padded = {}
    for key, value in batch.items():
        fill = IGNORE_INDEX if key == "labels" else 0
        padded[key] = torch.cat([value, torch.full((value.shape[0], extra), fill)], dim=1)
    for ids, mask in (("input_ids", "attention_mask"),
                      ("decoder_input_ids", "decoder_attention_mask")):
        junk = torch.randint(3, 500, padded[ids].shape, generator=torch.Generator().manual_seed(0))
        padded[ids] = torch.where(padded[mask].bool(), padded[ids], junk)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(batch["labels"].shape[0]):
            src = torch.tensor([real(batch["input_ids"][i], batch["attention_mask"][i])])
            dec_mask = batch["decoder_attention_mask"][i]
            dec = torch.tensor([real(batch["decoder_input_ids"][i], dec_mask)])
            target = torch.tensor(real(batch["labels"][i], dec_mask))
            logits = model(input_ids=src, decoder_input_ids=dec).logits[0]  # (T, V)
            total += float(torch.nn.functional.cross_entropy(logits.double(), target,
                                                             reduction="sum"))
            count += len(target)
        assert workload.target_count(padded) == count
        assert float(workload.loss(padded)) == pytest.approx(total / count, rel=1e-5)


def test_float64_is_float64_throughout(assert_float64_exact):
    # Fails without pipeline.workloads.precision: HF's T5 RMS norm computes its variance in float32.
    assert_float64_exact(build(dtype="float64"))
