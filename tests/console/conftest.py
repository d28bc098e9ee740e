"""The console in a real headless Chromium (Playwright), against a real ``tuneforge serve``.

The browser is Debian's ``chromium`` package, driven through Playwright's option for an existing
executable (``make test`` installs it where it is missing): the browser build Playwright would
download cannot be fetched here. Every test can save screenshots of the pages it visits under
``test-output/console/``; docs/console.md shows the key ones.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.e2e.conftest import Server, make_server

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "console"
WIDE = {"width": 1280, "height": 800}
NARROW = {"width": 400, "height": 800}
ACTION_TIMEOUT_MS = 60_000
"""How long a click or an expectation waits for the page: a hang guard, far above what a page takes."""


def chromium_executable() -> str:
    path = os.environ.get("TUNEFORGE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("no chromium on PATH: `make test` installs Debian's chromium package (see the Makefile)")
    return path


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=chromium_executable(), args=["--no-sandbox", "--disable-dev-shm-usage"]
    )
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An open console: a loopback bind with anonymous access (the embedded default)."""
    server = make_server(tmp_path_factory.mktemp("console"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=WIDE)  # type: ignore[arg-type]
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


def screenshot(page: Page, name: str, **options: Any) -> Path:
    """Save the page as ``test-output/console/<name>.png`` (whole page)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{re.sub(r'[^a-z0-9_-]+', '-', name.lower())}.png"
    page.screenshot(path=str(path), full_page=True, **options)
    return path
