"""Workload mechanics on a toy model: batching, seeding, functional loss, masked cross-entropy."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from pipeline.workloads.base import (
    IGNORE_INDEX, Workload, count_targets, derived_seed, fixed_subset, seeded,
    token_cross_entropy, trim_padding,
)


class ToyLM(nn.Module):
    def __init__(self, vocab=11, width=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.head(self.embed(input_ids)))


def toy_workload(seed=0, n_train=10, batch_size=3, test_batch_size=4):
    gen = torch.Generator().manual_seed(123)

    def make(n):
        return {"input_ids": torch.randint(0, 11, (n, 5), generator=gen),
                "labels": torch.arange(n).unsqueeze(1).expand(n, 5).clone()}

    with seeded(seed, "model-init"):
        model = ToyLM()
    return Workload(
        name="toy", is_transformer=False, model=model,
        train_examples=make(n_train), test_examples=make(20),
        collate=lambda b: b, criterion=lambda logits, labels: token_cross_entropy(
            logits, labels % 11, shift=True),
        target_count=lambda labels: count_targets(labels, shift=True),
        batch_size=batch_size, test_batch_size=test_batch_size, seed=seed,
        device=torch.device("cpu"),
    )


def test_each_epoch_visits_every_example_once_and_the_stream_repeats_per_seed():
    w = toy_workload(n_train=10, batch_size=3)
    stream = w.train_batches()
    first = [next(stream)["labels"][:, 0].tolist() for _ in range(6)]  # 2 epochs of 3 batches
    for epoch in (first[:3], first[3:]):
        seen = [i for batch in epoch for i in batch]
        assert len(seen) == 9 and len(set(seen)) == 9  # the 10th is the dropped partial batch
    assert first[:3] != first[3:]  # a fresh permutation per epoch
    again = w.train_batches()
    assert [next(again)["labels"][:, 0].tolist() for _ in range(6)] == first
    other = toy_workload(seed=1).train_batches()
    assert [next(other)["labels"][:, 0].tolist() for _ in range(6)] != first


def test_the_stream_skipped_to_any_batch_goes_on_as_the_whole_stream_across_epochs():
    w = toy_workload(n_train=10, batch_size=3)  # 3 batches per epoch
    stream = w.train_batches()
    whole = [next(stream)["labels"][:, 0].tolist() for _ in range(10)]
    for skip in (1, 3, 4, 7):  # a resumed trial: mid-epoch, at an epoch's start, two epochs on
        later = w.train_batches(skip=skip)
        assert [next(later)["labels"][:, 0].tolist() for _ in range(10 - skip)] == whole[skip:]


def test_test_batch_is_fixed_by_the_seed():
    a, b, c = toy_workload(seed=0), toy_workload(seed=0), toy_workload(seed=1)
    assert torch.equal(a.test_batch["labels"], b.test_batch["labels"])
    assert not torch.equal(a.test_batch["labels"], c.test_batch["labels"])
    assert a.test_batch["labels"].shape[0] == 4
    assert len(set(a.test_batch["labels"][:, 0].tolist())) == 4  # sampled without replacement


def test_batch_sizes_larger_than_the_data_are_rejected():
    with pytest.raises(ValueError, match="workload.batch_size"):
        toy_workload(n_train=2, batch_size=3)
    with pytest.raises(ValueError, match="workload.test_batch_size"):
        toy_workload(test_batch_size=21)


def test_functional_loss_uses_the_given_tensors_not_the_module():
    w = toy_workload()
    batch = w.test_batch
    params = {n: p.detach().clone() for n, p in w.model.named_parameters()}
    reference = w.loss(batch)
    assert torch.equal(w.loss(batch, params), reference)
    with torch.no_grad():
        for p in w.model.parameters():
            p.add_(1.0)
    assert torch.equal(w.loss_fn(batch)(params), reference)
    assert not torch.allclose(w.loss(batch), reference)


def test_token_cross_entropy_matches_a_float64_loop_over_real_targets():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 7, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 7, (3, 6), generator=gen)
    labels[0, 4:] = IGNORE_INDEX
    labels[2, 1:] = IGNORE_INDEX
    total, count = 0.0, 0
    for b in range(3):
        for t in range(5):  # position t predicts token t + 1
            target = int(labels[b, t + 1])
            if target != IGNORE_INDEX:
                total -= float(torch.log_softmax(logits[b, t], dim=0)[target])
                count += 1
    loss = token_cross_entropy(logits, labels, shift=True)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(total / count, rel=1e-12)
    assert count_targets(labels, shift=True) == count == 3 + 5 + 0
    assert count_targets(labels, shift=False) == 4 + 6 + 1


def test_trim_padding_drops_only_all_padding_columns():
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    batch = {"attention_mask": mask, "input_ids": torch.arange(10).view(2, 5),
             "labels": torch.zeros(2, 5), "other": torch.ones(2, 5)}
    out = trim_padding(batch, {"attention_mask": ("input_ids",)})
    assert out["input_ids"].tolist() == [[0, 1, 2], [5, 6, 7]]
    assert out["attention_mask"].shape == (2, 3) and out["other"].shape == (2, 5)


def test_fixed_subset_ignores_the_trial_seed_and_keeps_order():
    items = list(range(100))
    torch.manual_seed(1)
    a = fixed_subset(items, 10)
    torch.manual_seed(2)
    assert fixed_subset(items, 10) == a and a == sorted(a) and len(set(a)) == 10
    assert a != list(range(10))
    assert fixed_subset(items, None) == items and fixed_subset(items, 500) == items


def test_seeded_restores_the_global_rng_and_streams_differ():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    with seeded(0, "model-init"):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)
    with seeded(0, "model-init"):
        assert torch.equal(torch.rand(3), inside)
    assert derived_seed(0, "a") != derived_seed(0, "b") != derived_seed(1, "a")

