"""The console's shell: catalog pages, sign-in on a server that needs credentials, CSRF, layout."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.console.conftest import NARROW, screenshot
from tests.e2e.conftest import Server, make_server

KEYS = {"AKIDCONSOLE": "console-secret"}


def test_catalog_lists_every_model_and_filters_by_customization(page: Page, console_server: Server) -> None:
    page.goto(f"{console_server.url}/console")
    expect(page).to_have_url(f"{console_server.url}/console/catalog")
    expect(page.get_by_role("heading", name="Catalog")).to_be_visible()
    table = page.get_by_role("table", name="Models")
    expect(table.get_by_role("link", name="Forge Small")).to_be_visible()
    expect(table.get_by_text("huggingface.smollm2-135m-instruct-v1:0:8k")).to_be_visible()
    screenshot(page, "catalog")

    page.get_by_label("Customization").select_option("DISTILLATION")
    page.get_by_role("button", name="Filter").click()
    rows = table.locator("tbody tr")
    expect(rows.first).to_be_visible()
    for text in rows.all_inner_texts():
        assert "DISTILLATION" in text, text

    page.get_by_label("Customization").select_option("")
    page.get_by_role("button", name="Filter").click()
    table.get_by_role("link", name="Forge Small").click()
    expect(page.get_by_role("heading", name="Forge Small")).to_be_visible()
    hyper = page.get_by_role("table", name="FINE_TUNING hyperparameters", exact=True)
    expect(hyper.get_by_text("learningRate", exact=True)).to_be_visible()
    expect(hyper.get_by_text("epochCount", exact=True)).to_be_visible()
    screenshot(page, "model-detail")


def test_catalog_is_usable_at_a_narrow_width(browser: Browser, console_server: Server) -> None:
    context = browser.new_context(viewport=NARROW)  # type: ignore[arg-type]
    try:
        page = context.new_page()
        page.goto(f"{console_server.url}/console/catalog")
        expect(page.get_by_role("link", name="Playground")).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= NARROW["width"], f"the page scrolls sideways at {NARROW['width']} px: {width} px wide"
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement.textContent")
        assert "Skip to content" in focused
        screenshot(page, "catalog-narrow")
    finally:
        context.close()


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that needs credentials, as on a non-loopback bind (anonymous access off, keys set)."""
    server = make_server(tmp_path_factory.mktemp("locked"), allow_anonymous=False, access_keys=KEYS)
    server.start()
    yield server
    server.stop()


def test_a_server_with_keys_asks_for_them_and_refuses_a_bad_key(page: Page, locked_server: Server) -> None:
    page.goto(f"{locked_server.url}/console/catalog")
    expect(page).to_have_url(f"{locked_server.url}/console/login?next=%2Fconsole%2Fcatalog")
    page.get_by_label("Access key ID").fill("AKIDCONSOLE")
    page.get_by_label("Secret access key").fill("wrong-secret")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text(
        "AccessDeniedException: The security token included in the request is invalid."
    )
    screenshot(page, "sign-in-refused")

    page.get_by_label("Access key ID").fill("AKIDCONSOLE")
    page.get_by_label("Secret access key").fill("console-secret")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{locked_server.url}/console/catalog")
    cookie = next(c for c in page.context.cookies() if c["name"] == "tuneforge_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{locked_server.url}/console/login")
    page.goto(f"{locked_server.url}/console/catalog")
    expect(page.get_by_label("Access key ID")).to_be_visible()


def test_console_requests_without_a_session_or_csrf_token_are_refused(locked_server: Server) -> None:
    url = locked_server.url
    assert httpx.post(f"{url}/console/logout").status_code == 401
    signed_in = httpx.post(
        f"{url}/console/login", data={"access_key_id": "AKIDCONSOLE", "secret_access_key": "console-secret"}
    )
    assert signed_in.status_code == 303
    cookies = {"tuneforge_console": signed_in.cookies["tuneforge_console"]}
    no_token = httpx.post(f"{url}/console/logout", cookies=cookies)
    assert no_token.status_code == 403 and "CSRF" in no_token.text
    forged = httpx.post(f"{url}/console/logout", cookies={"tuneforge_console": "AKIDCONSOLE.9999999999.x.forged"})
    assert forged.status_code == 401
    foreign = httpx.get(f"{url}/console/catalog", cookies=cookies, headers={"origin": "http://evil.example"})
    assert foreign.status_code == 403
