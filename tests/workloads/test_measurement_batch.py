"""The measurement batch (paper App. B): training examples by default, fixed per seed, sub-batched."""

from __future__ import annotations

import pytest
import torch

from pipeline.workloads import build_workload

SPEC = {"name": "image", "size": "tiny", "batch_size": 4, "max_train_examples": 64, "max_test_examples": 32}


@pytest.fixture(scope="module")
def workload():
    return build_workload(SPEC, seed=0, device="cpu")


def rows(batches) -> set[bytes]:
    return {x.numpy().tobytes() for b in batches for x in b["pixel_values"]}


def test_train_batch_is_training_examples_drawn_once(workload):
    first = workload.measurement_batches("train", 16, 4)
    again = workload.measurement_batches("train", 16, 4)
    assert len(first) == 4 and all(b["labels"].shape == (4,) for b in first)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(first, again) for k in a)
    train = rows(workload._to_batch(workload._train, torch.arange(64)) for _ in [0])
    test = rows([workload.test_batch]) | rows(workload.measurement_batches("test", 32))
    assert rows(first) <= train and not rows(first) & test  # training examples, none held out
    other = build_workload(SPEC, seed=1, device="cpu").measurement_batches("train", 16)
    assert rows(other) != rows(first)  # another seed, another draw


def test_test_split_reproduces_the_old_test_batch(workload):
    (batch,) = workload.measurement_batches("test", 4)  # test_batch_size = batch_size = 4
    assert all(torch.equal(batch[k], workload.test_batch[k]) for k in batch)


def test_sub_batches_average_their_losses(workload):
    parts = workload.measurement_batches("train", 16, 8)
    whole = workload.measurement_batches("train", 16)
    params = {n: p.detach() for n, p in workload.model.eval().named_parameters()}
    with torch.no_grad():
        got = workload.loss_fn(parts)(params)
        expected = (workload.loss(parts[0]) + workload.loss(parts[1])) / 2
        assert torch.allclose(got, expected)
        # equal-sized parts of a per-example mean: the same as the whole batch's loss
        assert torch.allclose(got, workload.loss_fn(whole)(params), rtol=1e-5)


@pytest.mark.parametrize(("split", "size", "sub", "message"), [
    ("train", 65, None, "measure.batch_size: 65 exceeds the 64 train"),
    ("test", 33, None, "measure.batch_size: 33 exceeds the 32 test"),
    ("train", 16, 5, "measure.sub_batch_size"),
    ("valid", 4, None, "measure.batch"),
])
def test_bad_requests_name_the_key(workload, split, size, sub, message):
    with pytest.raises(ValueError, match=message):
        workload.measurement_batches(split, size, sub)
