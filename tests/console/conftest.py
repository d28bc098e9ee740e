"""The console in a real headless Chromium (Playwright), against a real ``tuneforge serve``.

The browser is Debian's ``chromium`` package, driven through Playwright's option for an existing
executable (``make test`` installs it where it is missing): the browser build Playwright would
download cannot be fetched here. Every test can save screenshots of the pages it visits under
``test-output/console/``; docs/console.md shows the key ones.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.e2e.conftest import BASE_MODEL, ROLE, Server, make_server, unique, wait_for_status
from tuneforge.data.tasks import make_classification_task

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


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    """Package-scoped: Playwright's sync API keeps an event loop running in the main thread until it
    stops, and the tests after this package call ``asyncio.run`` there."""
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
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


@dataclass(frozen=True)
class FineTuned:
    """A LoRA fine-tune of forge-small on the demo task (tickets -> category), trained through boto3."""

    model_arn: str
    model_name: str
    job_arn: str
    examples: list[tuple[str, str]]
    """(ticket, category) pairs from its training data, which the model answers with the category."""


@pytest.fixture(scope="session")
def fine_tuned(console_server: Server) -> FineTuned:
    from tests.e2e.test_serving import chat_record, ticket_and_label
    from tuneforge.storage import ObjectStore

    store = ObjectStore.from_settings(console_server.settings)
    train, _ = make_classification_task(n_train=400, n_test=5, seed=7)
    records = [chat_record(r) for r in train]
    store.write_bytes("s3://console/train.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    bedrock = console_server.bedrock()
    name = unique("console-triage")
    job_arn = bedrock.create_model_customization_job(
        jobName=name,
        customModelName=name,
        roleArn=ROLE,
        baseModelIdentifier=BASE_MODEL,
        trainingDataConfig={"s3Uri": "s3://console/train.jsonl"},
        outputDataConfig={"s3Uri": f"s3://console/out/{name}/"},
        hyperParameters={"seed": "7"},
    )["jobArn"]
    job = wait_for_status(bedrock, job_arn, ("Completed", "Failed", "Stopped"))
    assert job["status"] == "Completed", job.get("failureMessage")
    return FineTuned(job["outputModelArn"], name, job_arn, [ticket_and_label(r) for r in records[:4]])
