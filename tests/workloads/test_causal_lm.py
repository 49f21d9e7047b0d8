"""The causal LM workload: GPT-Neo on the stdlib code corpus (real prepared data, tiny size)."""

import pytest
import torch

import pipeline.data as data
from pipeline.workloads import build_workload
from pipeline.workloads.base import IGNORE_INDEX

SPEC = {"name": "causal_lm", "size": "tiny", "batch_size": 4, "seq_len": 32,
        "max_train_examples": 8, "max_test_examples": 4}


def build(seed=0, **extra):
    return build_workload({**SPEC, **extra}, seed=seed, device="cpu")


@pytest.fixture(scope="module")
def workload():
    return build()


def test_builds_with_local_vocabulary_ids(workload):
    model = workload.model
    assert workload.name == "causal_lm" and workload.is_transformer
    assert model.config._attn_implementation == "eager"
    tokenizer = data.get_tokenizer("code_bpe", vocab_size=512)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == model.config.bos_token_id == tokenizer.eos_token_id
    assert set(workload.test_batch) == {"input_ids", "attention_mask", "labels"}
    assert workload.test_batch["input_ids"].shape == (4, 32)
    assert int(workload.test_batch["input_ids"].max()) < len(tokenizer)
    assert 1e5 < sum(p.numel() for p in model.parameters()) < 1e6


def test_rows_are_windows_of_the_tokenized_test_files():
    """Independent of the workload's code: encode every test file, join with end-of-text."""
    w = build(max_test_examples=None)
    tokenizer = data.get_tokenizer("code_bpe", vocab_size=512)
    stream = []
    for text in data.load_code_files("test"):
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    rows = {tuple(stream[i : i + 32]) for i in range(0, len(stream) - 31, 32)}
    assert all(tuple(r) in rows for r in w.test_batch["input_ids"].tolist())
    assert torch.equal(w.test_batch["labels"], w.test_batch["input_ids"])  # no padding
    assert w.target_count(w.test_batch) == 4 * 31


def test_loss_goes_down(train_a_few_steps):
    before, after = train_a_few_steps(build(), steps=8)
    assert after < before - 0.2


def test_test_batch_is_seeded(assert_test_batch_seeded):
    assert_test_batch_seeded(build)


def test_functional_loss(workload, assert_functional_loss_matches):
    assert_functional_loss_matches(workload)


def test_padding_never_enters_the_loss(workload):
    """Rows cut short by padding (mask 0, label -100, junk ids) give exactly the token-weighted
    mean of each row's loss computed alone and unpadded."""
    model, batch = workload.model.eval(), workload.test_batch
    lengths = [32, 20, 9, 2]
    padded = {k: v.clone() for k, v in batch.items()}
    for row, n in enumerate(lengths):
        padded["input_ids"][row, n:] = 7  # arbitrary ids: they must not matter
        padded["attention_mask"][row, n:] = 0
        padded["labels"][row, n:] = IGNORE_INDEX
    extra = 5  # and some all-padding columns on the right
    padded = {k: torch.cat([v, torch.full((4, extra), IGNORE_INDEX if k == "labels" else 0)], 1)
              for k, v in padded.items()}
    total = 0.0
    with torch.no_grad():
        for row, n in enumerate(lengths):
            ids = batch["input_ids"][row : row + 1, :n]
            logits = model(input_ids=ids).logits[0, :-1].double()  # (n-1, V)
            total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        count = sum(n - 1 for n in lengths)
        assert workload.target_count(padded) == count
        assert float(workload.loss(padded)) == pytest.approx(total / count, rel=1e-5)


def test_float64_is_float64_throughout(assert_float64_exact):
    # Fails without pipeline.workloads.precision: HF's GPT-Neo attention casts query and key
    # to float32 (docs/data.md, 'Pitfalls').
    assert_float64_exact(build(dtype="float64"))


def test_model_overrides_reach_the_config():
    w = build(model={"num_layers": 3, "hidden_size": 32, "num_heads": 4})
    config = w.model.config
    assert (config.num_layers, config.hidden_size, config.num_heads) == (3, 32, 4)
    assert config.attention_layers == ["global", "local", "global"]  # GPT-Neo's alternation
    assert torch.isfinite(w.loss(w.test_batch))
