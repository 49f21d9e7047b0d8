"""Hub loaders (`source: hub`): schema mapping on in-memory fixtures, one-line errors offline."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Image, Value

from pipeline.data import hub

REPO = Path(__file__).resolve().parents[2]


def test_opus_books_schema_maps_to_pairs_split_by_id():
    rows = [{"en": f"line {i}", "fr": f"ligne {i}"} for i in range(200)]
    ds = Dataset.from_dict({"id": [str(i) for i in range(200)], "translation": rows})
    train = hub.translation_pairs_from_hub(ds, "train")
    test = hub.translation_pairs_from_hub(ds, "test")
    assert sorted(train + test) == sorted((r["en"], r["fr"]) for r in rows)
    assert not set(train) & set(test) and 5 <= len(test) <= 40
    assert train == sorted(train, key=lambda p: int(p[0].split()[1]))  # hub order kept
    assert hub.translation_pairs_from_hub(ds, "test") == test


def test_the_stack_schema_maps_to_file_texts():
    contents = [f"def f{i}():\n    return {i}\n" for i in range(100)]
    ds = Dataset.from_dict({"content": contents, "path": [f"m{i}.py" for i in range(100)],
                            "size": [len(c) for c in contents]})
    train, test = hub.code_files_from_hub(ds, "train"), hub.code_files_from_hub(ds, "test")
    assert sorted(train + test) == sorted(contents) and test and not set(train) & set(test)


def test_imdb_schema_maps_to_text_label():
    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    ds = Dataset.from_dict({"text": ["awful", "great", "meh"], "label": [0, 1, 0]}, features)
    assert hub.reviews_from_hub(ds) == [("awful", 0), ("great", 1), ("meh", 0)]


def test_cifar10_schema_maps_to_uint8_arrays():
    import PIL.Image

    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    features = Features({"img": Image(), "label": ClassLabel(num_classes=10)})
    ds = Dataset.from_dict({"img": [PIL.Image.fromarray(a) for a in arrays],
                            "label": [3, 0, 9, 1]}, features)
    images, labels = hub.images_from_hub(ds)
    assert images.dtype == np.uint8 and images.shape == (4, 32, 32, 3)
    assert np.array_equal(images, arrays)  # PNG round trip is lossless
    assert labels.dtype == np.int64 and labels.tolist() == [3, 0, 9, 1]


def test_bad_split_rejected_before_any_hub_access():
    with pytest.raises(ValueError, match="split"):
        hub.load_hub_reviews("unsupervised")


def test_offline_hub_loaders_fail_in_one_line_naming_the_local_source(tmp_path):
    # A fresh interpreter: datasets reads HF_HUB_OFFLINE at import; an empty HF_HOME so that
    # nothing cached on this machine could answer.
    script = (
        "from pipeline.data import hub, DataMissingError\n"
        "for name in ('translation_pairs', 'code_files', 'reviews', 'images'):\n"
        "    try:\n"
        "        getattr(hub, 'load_hub_' + name)('train')\n"
        "    except DataMissingError as exc:\n"
        "        print(type(exc).__name__, '|', exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path),
           "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=120, cwd=tmp_path)
    lines = out.stdout.splitlines()
    assert len(lines) == 4, out.stderr[-2000:]
    for line, local in zip(lines, ("bible_en_fr", "stdlib_code", "polarity_reviews",
                                   "fashion_mnist")):
        assert line.startswith("HubUnavailableError | hub dataset ")
        assert f"`source: local` (data source {local!r}" in line
        assert f"python -m pipeline setup --only {local}" in line
