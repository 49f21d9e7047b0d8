"""Fixtures for the data tests: the real prepared cache (the test command runs the setup first)."""

import shutil
from pathlib import Path

import pytest

from pipeline.data import SOURCES, DataMissingError, default_data_dir
from pipeline.data.loaders import source_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The prepared cache; fails (never skips) when a source is missing."""
    root = default_data_dir()
    missing = []
    for name in SOURCES:
        try:
            source_dir(name, root)
        except DataMissingError as exc:
            missing.append(str(exc))
    if missing:
        pytest.fail("corpora are not prepared (`python -m pipeline setup` runs before the "
                    "tests):\n" + "\n".join(missing), pytrace=False)
    return root


@pytest.fixture
def copy_source(data_dir, tmp_path):
    """Copy one prepared source into a fresh data dir under tmp_path; returns that data dir."""
    def copy(name: str) -> Path:
        shutil.copytree(data_dir / name, tmp_path / "data" / name)
        return tmp_path / "data"
    return copy
