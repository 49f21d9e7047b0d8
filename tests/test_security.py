"""What the project writes and serves: no credentials in written URIs, no world-writable results."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.redact import mask_uri
from pipeline.tracking import browse_hint

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("uri", "shown"), [
    ("http://alice:s3cret@mlflow.internal:5000", "http://alice:***@mlflow.internal:5000"),
    ("https://ghp_tokenvalue@host/path", "https://***@host/path"),
    ("http://host:5000/?token=abc&x=1", "http://host:5000/?token=***&x=1"),
    ("https://h/p?X-Amz-Signature=ff&api_key=k&a=b", "https://h/p?X-Amz-Signature=***&api_key=***&a=b"),
    ("postgresql://user:pw@db:5432/mlflow", "postgresql://user:***@db:5432/mlflow"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("relative/path", "relative/path"),
])
def test_credentials_are_masked(uri, shown):
    assert mask_uri(uri) == shown


def test_the_printed_hint_has_no_credentials():
    assert "s3cret" not in browse_hint("http://alice:s3cret@h:5000") and "xyzzy" not in browse_hint("http://h/?token=xyzzy")


def test_results_are_not_world_writable_under_a_permissive_umask(tmp_path):
    """The command's umask (set in main) and the atomic writer's mode, in a process started with umask 0."""
    script = (
        "import sys; from pipeline.__main__ import private_umask; private_umask()\n"
        "from pipeline.layout import ResultsLayout; from pipeline.atomic import atomic_write_text\n"
        f"layout = ResultsLayout.of({str(tmp_path)!r}, 'sweep')\n"
        "layout.write_plan(['a']); layout.records_dir('a').mkdir(parents=True)\n"
        "atomic_write_text(layout.done_mark('a'), '{}')\n"
        "open(layout.report_path, 'w').write('# report')\n"  # a plain open, as libraries write files
    )
    subprocess.run(["bash", "-c", 'umask 000 && exec "$@"', "sh", sys.executable, "-c", script],
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True, timeout=120)
    paths = list((tmp_path / "sweep").rglob("*"))
    assert len(paths) >= 6
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert not mode & (stat.S_IWOTH | stat.S_IWGRP), f"{path}: {oct(mode)}"


def test_the_atomic_writer_never_grants_others_write(tmp_path):
    from pipeline.atomic import atomic_write_bytes

    old = os.umask(0)
    try:
        path = atomic_write_bytes(tmp_path / "f.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
