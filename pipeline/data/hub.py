"""The paper's own datasets from the Hugging Face hub (`source: hub`), mapped to the local shapes.

Our machines cannot reach the hub (docs/data.md); these loaders are for users who can. Each
`*_from_hub` function maps a `datasets.Dataset` of the hub's schema to what the matching local
loader returns, and is tested on a small in-memory dataset of that schema.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.cache import DataMissingError, setup_hint
from pipeline.data.corpora import split_of
from pipeline.data.loaders import check_split


class HubUnavailableError(DataMissingError):
    """A hub dataset could not be loaded; the message names the local alternative."""


def _load_hub(path: str, local: str, **kwargs):
    import datasets  # heavy import, only on this path

    try:
        return datasets.load_dataset(path, **kwargs)
    except Exception as exc:  # ConnectionError offline, DatasetNotFoundError, auth errors...
        reason = (str(exc).strip().splitlines() or [""])[0][:160]
        raise HubUnavailableError(
            f"hub dataset {path!r} is not reachable ({type(exc).__name__}: {reason}); offline "
            f"alternative: set the workload's `source: local` (data source {local!r}, prepared by "
            f"{setup_hint(local)})") from None


# ------------------------------------------------------- opus_books en-fr (only a train split)

def translation_pairs_from_hub(ds, split: str) -> list[tuple[str, str]]:
    """opus_books rows {"id", "translation": {"en", "fr"}} -> (en, fr); split by hash of id."""
    check_split(split)
    return [(t["en"], t["fr"]) for i, t in zip(list(ds["id"]), list(ds["translation"]))
            if split_of(str(i)) == split]


def load_hub_translation_pairs(split: str) -> list[tuple[str, str]]:
    check_split(split)
    ds = _load_hub("opus_books", "bible_en_fr", name="en-fr", split="train")
    return translation_pairs_from_hub(ds, split)


# ------------------------------------------------- the-stack-smol Python (only a train split)

def code_files_from_hub(ds, split: str) -> list[str]:
    """the-stack-smol rows {"content", ...} -> file texts; split by hash of the content."""
    check_split(split)
    return [text for text in list(ds["content"]) if split_of(text) == split]


def load_hub_code_files(split: str) -> list[str]:
    check_split(split)
    ds = _load_hub("bigcode/the-stack-smol", "stdlib_code", data_dir="data/python", split="train")
    return code_files_from_hub(ds, split)


load_hub_code = load_hub_code_files  # the name pipeline.workloads.causal_lm calls


# ----------------------------------------------------------------------- imdb (train / test)

def reviews_from_hub(ds) -> list[tuple[str, int]]:
    """imdb rows {"text", "label": 0 neg / 1 pos} -> (text, label)."""
    return [(text, int(label)) for text, label in zip(list(ds["text"]), list(ds["label"]))]


def load_hub_reviews(split: str) -> list[tuple[str, int]]:
    check_split(split)
    return reviews_from_hub(_load_hub("imdb", "polarity_reviews", split=split))


# -------------------------------------------------------------------- cifar10 (train / test)

def images_from_hub(ds) -> tuple[np.ndarray, np.ndarray]:
    """cifar10 rows {"img": PIL image, "label"} -> images (N, 32, 32, 3) uint8, labels (N,) int64.

    Channels last, as the hub stores them (Fashion-MNIST gives (N, 28, 28): the image workload
    pads and repeats that to this shape).
    """
    column = "img" if "img" in ds.column_names else "image"
    images = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in list(ds[column])])
    return images, np.asarray(list(ds["label"]), dtype=np.int64)


def load_hub_images(split: str) -> tuple[np.ndarray, np.ndarray]:
    check_split(split)
    return images_from_hub(_load_hub("cifar10", "fashion_mnist", split=split))
