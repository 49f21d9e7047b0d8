"""The Workload interface (model + data + loss) and the helpers the workload modules share."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch.func import functional_call

from pipeline.workloads.definitions import DTYPE_NAMES
# Spec validation lives in the torch-free pipeline.workloads.definitions; this name stays for the
# callers that still import it from here (pipeline.config).
from pipeline.workloads.definitions import validate_workload_spec  # noqa: F401

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}  # "float32" -> torch.float32 ...
IGNORE_INDEX = -100  # the label of positions that never enter the loss (padding)

Batch = dict[str, torch.Tensor]
T = TypeVar("T")
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Workload:
    """A model, its data and its loss behind one interface (AlgoPerf's `spec.Workload`, trimmed).

    Batches are dicts of the model's keyword inputs plus "labels", on the workload's device.
    `loss` runs the module in whatever mode it is in: callers that need a deterministic loss
    (the sharpness measurements: docs/science.md, 'Directional sharpness') call `model.eval()`
    first, which disables dropout and makes BatchNorm use its running statistics.
    """

    def __init__(
        self,
        *,
        name: str,
        is_transformer: bool,
        model: torch.nn.Module,
        train_examples: Mapping[str, torch.Tensor],
        test_examples: Mapping[str, torch.Tensor],
        collate: Callable[[Batch], Batch],
        criterion: Criterion,
        target_count: Callable[[torch.Tensor], int],
        batch_size: int,
        test_batch_size: int,
        seed: int,
        device: torch.device,
    ) -> None:
        self.name = name
        self.is_transformer = is_transformer
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self._train = dict(train_examples)
        self._test = dict(test_examples)
        self._collate = collate
        self._criterion = criterion
        self._target_count = target_count
        self._seed = seed
        self._train_seed = derived_seed(seed, "train-order")
        n_train = _example_count(self._train)
        n_test = _example_count(test_examples)
        if batch_size > n_train:
            raise ValueError(
                f"workload.batch_size: {batch_size} exceeds the {n_train} training examples"
            )
        if test_batch_size > n_test:
            raise ValueError(
                f"workload.test_batch_size: {test_batch_size} exceeds the {n_test} test examples"
            )
        # The fixed test batch: drawn once, from its own stream of the seed (docs/science.md).
        gen = torch.Generator().manual_seed(derived_seed(seed, "test-batch"))
        pick = torch.randperm(n_test, generator=gen)[:test_batch_size]
        self.test_batch: Batch = self._to_batch(test_examples, pick)

    def train_batches(self) -> Iterator[Batch]:
        """Endless minibatches: a fresh seeded permutation per epoch, the partial batch dropped.

        Every call starts the same stream, so two calls with the same seed yield the same batches.
        """
        gen = torch.Generator().manual_seed(self._train_seed)
        n = _example_count(self._train)
        while True:
            order = torch.randperm(n, generator=gen)
            for start in range(0, n - self.batch_size + 1, self.batch_size):
                yield self._to_batch(self._train, order[start : start + self.batch_size])

    def measurement_batches(self, split: str, size: int, sub_batch_size: int | None = None) -> list[Batch]:
        """A fixed batch of `size` examples of `split` ("train" or "test"), as its sub-batches.

        Drawn from the seed's own stream for that split, the same on every call: "test" is the
        first `size` of the test batch's permutation (with size = test_batch_size, exactly
        `test_batch`), "train" a random subset of the training examples drawn once, as the paper
        does (App. B). Sub-batches of `sub_batch_size` examples (None: one) in the draw's order.
        """
        if split not in ("train", "test"):
            raise ValueError(f"measure.batch: expected train or test, got {split!r}")
        examples = self._train if split == "train" else self._test
        n = _example_count(examples)
        if size > n:
            raise ValueError(f"measure.batch_size: {size} exceeds the {n} {split} examples of workload "
                             f"{self.name!r}; set measure.batch_size to at most {n}")
        step = sub_batch_size or size
        if size % step:
            raise ValueError(f"measure.sub_batch_size: {step} must divide measure.batch_size ({size})")
        stream = "measure-batch" if split == "train" else "test-batch"
        gen = torch.Generator().manual_seed(derived_seed(self._seed, stream))
        pick = torch.randperm(n, generator=gen)[:size]
        return [self._to_batch(examples, pick[i:i + step]) for i in range(0, size, step)]

    def loss(self, batch: Mapping[str, torch.Tensor],
             params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Mean loss over the batch's real (non-padding) targets.

        `params=None` uses the module's own weights; otherwise the given tensors replace them by
        name (torch.func.functional_call; names missing from `params` keep the module's tensors,
        tied weights follow their partner).
        """
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        if params is None:
            outputs = self.model(**inputs)
        else:
            outputs = functional_call(self.model, dict(params), args=(), kwargs=inputs)
        return self._criterion(outputs.logits, batch["labels"])

    def loss_fn(self, batch: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]]
                ) -> Callable[[Mapping[str, torch.Tensor]], torch.Tensor]:
        """The functional loss `params -> scalar` on a fixed batch, as pipeline.measure expects; on
        a list of sub-batches, the mean of their losses (each weighted alike, as the paper averages)."""
        if isinstance(batch, Mapping):
            return lambda params: self.loss(batch, params)
        parts = list(batch)
        if len(parts) == 1:
            return self.loss_fn(parts[0])
        return lambda params: torch.stack([self.loss(b, params) for b in parts]).mean()

    def target_count(self, batch: Mapping[str, torch.Tensor]) -> int:
        """How many targets `loss` averages over (tokens that are not padding, or examples)."""
        return int(self._target_count(batch["labels"]))

    def _to_batch(self, examples: Mapping[str, torch.Tensor], index: torch.Tensor) -> Batch:
        batch = self._collate({k: v[index] for k, v in examples.items()})
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}


def _example_count(examples: Mapping[str, torch.Tensor]) -> int:
    return int(next(iter(examples.values())).shape[0])


def derived_seed(seed: int, stream: str) -> int:
    """An independent, process-stable seed per named random stream (Python's hash() is salted)."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@contextlib.contextmanager
def seeded(seed: int, stream: str) -> Iterator[None]:
    """Seed torch's global RNG inside the block and restore it after: HF models initialise their
    weights from the global RNG and take no generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed, stream))
        yield


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, shift: bool) -> torch.Tensor:
    """Cross-entropy averaged over the targets that are not IGNORE_INDEX, in the logits' dtype.

    Computed here rather than by the HF model, whose loss upcasts logits with `.float()` and so
    breaks float64 references (docs/data.md). `shift=True` predicts token t+1 from position t.
    """
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]  # (B, T-1, V), (B, T-1)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


def count_targets(labels: torch.Tensor, *, shift: bool) -> int:
    if shift:
        labels = labels[:, 1:]
    return int((labels != IGNORE_INDEX).sum())


def trim_padding(batch: Batch, groups: Mapping[str, tuple[str, ...]]) -> Batch:
    """Drop the trailing columns that are padding in every row (mask key -> keys it governs).

    Padding never changes the loss (it is masked and labelled IGNORE_INDEX); trimming it only
    saves compute when a batch's sequences are all shorter than the stored width.
    """
    batch = dict(batch)
    for mask_key, keys in groups.items():
        width = max(int(batch[mask_key].sum(dim=1).max()), 1)
        for key in (mask_key, *keys):
            batch[key] = batch[key][:, :width]
    return batch


def fixed_subset(items: Sequence[T], n: int | None) -> list[T]:
    """`n` items chosen once and for all (not by the trial seed: the data belongs to the workload,
    the seed only orders and samples it), in their original order; all of them if n is None."""
    if n is None or n >= len(items):
        return list(items)
    keep = torch.randperm(len(items), generator=torch.Generator().manual_seed(0))[:n]
    return [items[i] for i in sorted(keep.tolist())]
