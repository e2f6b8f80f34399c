"""Debian's Chromium under Playwright, set up for a machine whose network refuses everything but loopback.

Playwright's own browser builds are never downloaded (`playwright install` cannot reach its CDN here): the
test drives the `chromium` Debian package, which `make system-deps` installs. A missing browser fails the
test with the command that installs it; it is never a skip.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, expect, sync_playwright

CHROMIUM = Path(os.environ.get("CVQ_CHROMIUM", "/usr/bin/chromium"))
# Without these, Chromium keeps trying to reach Google's update, sync and QUIC endpoints, which the closed
# network refuses; --no-sandbox because the tests run as root.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 1000}  # tall enough that the four worker rows are all rendered
DEFAULT_TIMEOUT_MS = 30_000  # generous: two shared cores, and the UI renders from GraphQL answers


def require_chromium() -> Path:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `make system-deps` "
                    "(apt-get install chromium), or set CVQ_CHROMIUM to its path", pytrace=False)
    return CHROMIUM


@contextmanager
def chromium(user_data_dir: Path) -> Iterator[BrowserContext]:
    """A headless Chromium with a fresh profile in `user_data_dir`, closed on exit whatever happened."""
    executable = require_chromium()
    user_data_dir.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        # A persistent context is how Playwright takes a user-data-dir of ours (launch() refuses the flag).
        context = playwright.chromium.launch_persistent_context(
            str(user_data_dir), executable_path=str(executable), headless=True, args=CHROMIUM_ARGS,
            viewport=VIEWPORT)
        try:
            context.set_default_timeout(DEFAULT_TIMEOUT_MS)
            context.set_default_navigation_timeout(60_000)
            expect.set_options(timeout=DEFAULT_TIMEOUT_MS)  # expect() waits 5 s unless told otherwise
            yield context
        finally:
            context.close()
