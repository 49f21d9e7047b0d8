"""Pages as a person sees them: headless Chromium (Debian's `chromium`) renders a page, keeps a screenshot and
returns the DOM after its scripts ran; `mlflow_ui` serves a tracking store on loopback for it to look at.

Used by the tests (tests/test_mlflow_ui.py) and to make the screenshots under docs/ with the same code.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.tracking_server import spawn, wait_healthy

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
RENDER_SECONDS = 120  # Chromium's wall-time limit for one page
SERVER_SECONDS = 120  # for `mlflow server` to answer its health check


def find_chromium() -> str | None:
    """The Chromium executable ($CHROMIUM, else the first of CHROMIUM_NAMES on PATH), or None."""
    named = os.environ.get("CHROMIUM")
    if named:
        return shutil.which(named)
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def render(url: str, screenshot: Path, *, size: tuple[int, int] = (1600, 1000), budget_ms: int = 20000) -> str:
    """Load `url` in headless Chromium, let its scripts run for `budget_ms` of virtual time, save a PNG
    screenshot and return the DOM as it is then. RuntimeError (with Chromium's last lines) on failure."""
    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError(f"no Chromium found (tried $CHROMIUM, {', '.join(CHROMIUM_NAMES)})")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--hide-scrollbars", "--no-first-run", f"--user-data-dir={profile}",
                  f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={budget_ms}"]
        dom = _chromium([*common, "--dump-dom", url])
        _chromium([*common, f"--screenshot={screenshot}", url])
    if not screenshot.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot {screenshot}")
    return dom


def _chromium(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=RENDER_SECONDS, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"chromium exited {done.returncode}: {tail}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_ui(store_uri: str, log: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 serving `store_uri` (its runs' artifact locations as they are),
    stopped on exit; yields its address."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        server = spawn("127.0.0.1", port, store_uri, out)
    try:
        if not wait_healthy(server, url, SERVER_SECONDS):
            raise RuntimeError(f"mlflow server did not come up; its log: {log}")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
