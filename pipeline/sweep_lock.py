"""One sweep at a time per sweep directory: an exclusive flock on <sweep dir>/sweep.lock, held for
the command's life. The kernel drops it when the process ends, however it ends (a crashed or
killed process leaves no stale lock); the file names the holder (pid, host, command)."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = "sweep.lock"


class SweepLocked(RuntimeError):
    """Another process holds the sweep directory: one line naming it."""


class SweepLock:
    """Holds the lock from `acquire` until `release` or the process's end."""

    def __init__(self, sweep_dir: Path) -> None:
        self.path = Path(sweep_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> SweepLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise SweepLocked(f"{self.path.parent} is in use by another run of this sweep ({holder}); "
                              "wait for it to end, or stop it (it resumes with the same command)") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> SweepLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {data['pid']} on host {data['host']}, since {data['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown: it is starting"
