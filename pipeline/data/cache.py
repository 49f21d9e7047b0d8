"""The corpus cache on disk: its location, per-source manifests, checks, locks and atomic writes."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.atomic import atomic_write_text

# Bump when the layout or the content of any prepared file changes: every cache built by an
# older version then fails its check and is rebuilt by `python -m pipeline setup`.
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class DataMissingError(RuntimeError):
    """A source is not prepared (or its cache is damaged); the message says how to prepare it."""


class DataPreparationError(RuntimeError):
    """Preparing a source failed (download refused, no network, unexpected content)."""


def default_data_dir() -> Path:
    """$PIPELINE_DATA_DIR if set, else ~/.cache/adam-sgd-sharpness."""
    env = os.environ.get("PIPELINE_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "adam-sgd-sharpness"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    return default_data_dir() if data_dir is None else Path(data_dir).expanduser()


def setup_hint(name: str) -> str:
    return f"`python -m pipeline setup --only {name}`"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(source_dir: Path, *, source: str, source_version: str, meta: dict) -> dict:
    """Checksum every file under `source_dir` and write the manifest there, last and atomically.

    The manifest is the commit mark of a source: a directory without one (a crash mid-build)
    or whose files no longer match it is treated as not prepared.
    """
    files = {}
    for path in sorted(p for p in source_dir.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(source_dir).as_posix()
        files[rel] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "source_version": source_version,
        "files": files,
        "meta": meta,
    }
    atomic_write_text(source_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def read_manifest(source_dir: Path) -> dict | None:
    try:
        return json.loads((source_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def check_source(source_dir: Path, *, source_version: str, checksums: bool) -> str | None:
    """Return None if the cached source is complete, else a short reason.

    Sizes are always compared; sha256 only with `checksums=True` (the setup command does,
    ~1 s for the whole cache; loaders inside trials compare sizes only).
    """
    manifest = read_manifest(source_dir)
    if manifest is None:
        return "manifest missing"
    if manifest.get("schema_version") != SCHEMA_VERSION:
        return f"schema version {manifest.get('schema_version')} != {SCHEMA_VERSION}"
    if manifest.get("source_version") != source_version:
        return f"source version {manifest.get('source_version')!r} != {source_version!r}"
    for rel, entry in manifest["files"].items():
        path = source_dir / rel
        if not path.is_file():
            return f"{rel} missing"
        if path.stat().st_size != entry["size"]:
            return f"{rel} has {path.stat().st_size} bytes, manifest says {entry['size']}"
        if checksums and file_sha256(path) != entry["sha256"]:
            return f"{rel} checksum mismatch"
    return None


def replace_dir(new: Path, target: Path) -> None:
    """Move the finished directory `new` to `target`, removing what was there before.

    Two renames on the same filesystem: a reader sees the old tree, no tree, or the new one,
    never a mix (and the missing tree reads as "not prepared", with a clear message).
    """
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def locked(data_dir: Path, name: str) -> Iterator[None]:
    """Exclusive inter-process lock for one cache entry (concurrent trials or setups wait)."""
    lock_dir = data_dir / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    # Read-only is enough for flock, so a lock file created by another user still works.
    fd = os.open(lock_dir / f"{name}.lock", os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def staging_dir(data_dir: Path, name: str) -> Iterator[Path]:
    """A fresh scratch directory beside the cache entry (same filesystem, so renames are atomic)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=data_dir, prefix=f".{name}.partial-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
