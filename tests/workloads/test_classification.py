"""The classification workload: BERT on movie reviews, from a config or the pretrained MiniLM."""

import pytest
import torch
from safetensors.torch import load_file

import pipeline.data as data
from pipeline.workloads import build_workload

SEQ_LEN = 48
SPEC = {"name": "classification", "size": "tiny", "batch_size": 8, "seq_len": SEQ_LEN,
        "max_train_examples": 64, "max_test_examples": 32}
# The snippets are short, so their batches carry real padding.
SNIPPETS = {**SPEC, "corpus": "snippets", "max_train_examples": 256, "max_test_examples": 256}
MINILM = {**SPEC, "pretrained": True, "batch_size": 4, "seq_len": 32}


def build(seed=0, **extra):
    return build_workload({**SPEC, **extra}, seed=seed, device="cpu")


@pytest.fixture(scope="module")
def snippets():
    return build_workload(SNIPPETS, seed=0, device="cpu")


@pytest.fixture(scope="module")
def minilm():
    return build_workload(MINILM, seed=0, device="cpu")


def real(row, mask):
    return row[mask.bool()].tolist()


def test_batches_hold_only_model_inputs_and_labels(snippets):
    """The Gauss-Newton analysis passes a batch minus its labels straight to the model."""
    batch = snippets.test_batch
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["labels"].shape == (8,) and set(batch["labels"].tolist()) <= {0, 1}
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    assert snippets.model.eval()(**inputs).logits.shape == (8, 2)
    assert snippets.name == "classification" and snippets.is_transformer
    assert snippets.model.config._attn_implementation == "eager"


def test_rows_are_the_reviews_tokenized_independently(snippets):
    tokenizer = data.get_tokenizer("reviews_wordpiece", vocab_size=1024)
    reviews = data.load_reviews("snippets", "test")
    encoded = tokenizer([t for t, _ in reviews], truncation=True, max_length=SEQ_LEN)["input_ids"]
    expected = {tuple(ids): label for ids, (_, label) in zip(encoded, reviews)}
    batch = snippets.test_batch
    for i in range(8):
        ids = tuple(real(batch["input_ids"][i], batch["attention_mask"][i]))
        assert ids[0] == tokenizer.cls_token_id and ids in expected
        assert expected[ids] == int(batch["labels"][i])
    assert int(batch["attention_mask"].sum()) < batch["attention_mask"].numel()  # some padding
    assert snippets.target_count(batch) == 8


def test_loss_goes_down(train_a_few_steps):
    before, after = train_a_few_steps(build(), steps=10, lr=3e-3)
    assert after < before - 0.05


def test_test_batch_is_seeded(assert_test_batch_seeded):
    assert_test_batch_seeded(build)


def test_functional_loss(snippets, assert_functional_loss_matches):
    assert_functional_loss_matches(snippets)


def test_padding_never_enters_the_loss():
    """Junk ids at padded positions and extra padding columns change nothing: the loss equals
    that of each review run alone, unpadded."""
    # Room for 5 padding columns beyond seq_len (tiny models have exactly seq_len positions).
    spec = {**SNIPPETS, "model": {"max_position_embeddings": SNIPPETS["seq_len"] + 5}}
    w = build_workload(spec, seed=0, device="cpu")
    model, batch = w.model.eval(), w.test_batch
    with torch.no_grad():  # a fresh head gives ~equal logits whatever the input: sharpen it
        model.classifier.weight.mul_(1000.0)
    padded = {k: v.clone() for k, v in batch.items()}
    extra = torch.zeros(8, 5, dtype=torch.int64)
    padded["input_ids"] = torch.cat([padded["input_ids"], extra], 1)
    padded["attention_mask"] = torch.cat([padded["attention_mask"], extra], 1)
    junk = torch.randint(5, 1000, padded["input_ids"].shape,
                         generator=torch.Generator().manual_seed(0))
    padded["input_ids"] = torch.where(padded["attention_mask"].bool(), padded["input_ids"], junk)
    with torch.no_grad():
        rows = [real(batch["input_ids"][i], batch["attention_mask"][i]) for i in range(8)]
        alone = torch.cat([model(input_ids=torch.tensor([row])).logits for row in rows])
        assert float(alone.std(dim=0).max()) > 0.05  # the logits do depend on the input
        reference = torch.nn.functional.cross_entropy(alone.double(), batch["labels"])
        assert float(w.loss(padded)) == pytest.approx(float(reference), rel=1e-5)


def test_from_config_positions_are_the_ones_used():
    # Unused position rows would be zero-gradient coordinates that skew the global clip's tau.
    assert build().model.config.max_position_embeddings == SPEC["seq_len"]
    assert build(seq_len=24).model.config.max_position_embeddings == 24


def test_float64_is_float64_throughout(assert_float64_exact):
    assert_float64_exact(build(dtype="float64"))


def test_pretrained_minilm_loads_the_checkpoint_with_a_seeded_head(minilm):
    model = minilm.model
    checkpoint = load_file(data.minilm_dir() / "model.safetensors")
    key = next(k for k in checkpoint if k.endswith("encoder.layer.0.attention.self.query.weight"))
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight, checkpoint[key])
    assert model.config.vocab_size == 30522 and model.config._attn_implementation == "eager"
    again = build_workload(MINILM, seed=0, device="cpu").model.classifier.weight
    other = build_workload(MINILM, seed=1, device="cpu").model.classifier.weight
    assert torch.equal(model.classifier.weight, again)
    assert not torch.equal(model.classifier.weight, other)
    # Its own WordPiece vocabulary (bert-base-uncased's): [CLS] is 101.
    assert int(minilm.test_batch["input_ids"][0, 0]) == 101


def test_pretrained_minilm_trains(minilm, train_a_few_steps):
    before, after = train_a_few_steps(minilm, steps=2, n_batches=1, lr=1e-4)
    assert after < before


def test_gauss_newton_smoothness_runs_on_a_batch_without_labels(snippets):
    from pipeline.measure.gauss_newton import gauss_newton_smoothness

    batch = {k: v[:4] for k, v in snippets.test_batch.items() if k != "labels"}
    result = gauss_newton_smoothness(snippets.model, batch)
    assert result["L"] > 0 and result["L"] >= result["ell"]
