"""The system Chromium under Playwright, for the browser tests (Playwright never
downloads a browser here); absent, the tests skip, or fail when
PYLIGHT_REQUIRE_SERVICES=1 asks for every service."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.conftest import REQUIRE

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def missing(what: str) -> None:
    if REQUIRE:
        pytest.fail(f"{what} is not installed; PYLIGHT_REQUIRE_SERVICES=1 requires it")
    pytest.skip(f"{what} is not installed")


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium, closed afterwards."""
    if not os.path.exists(CHROMIUM):
        missing("chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright (pip install playwright)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=FLAGS)
        try:
            yield instance
        finally:
            instance.close()
