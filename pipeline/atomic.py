"""The one atomic file writer: readers see the old file or the whole new one, never a partial file."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

FILE_MODE = 0o644  # owner writes; group and others only read


def atomic_write_bytes(path: str | os.PathLike[str], payload: bytes) -> Path:
    """Write to a hidden temp file in the same directory, fsync, then os.replace.

    The file gets mode 0o644 (os.open, not mkstemp's 0o600), further narrowed by the umask: other
    readers of shared storage (a results directory, the corpus cache) can read it, nobody else can
    write it, even under a umask of 0.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode())
