"""The playground: a streamed chat with the fine-tuned model, two models side by side, errors, escaping.

The fine-tuned model is served by a custom model deployment (on demand: its LoRA adapter on the
base model's engine, the cheapest way to make it invocable), created through boto3 and deleted at
the end of the module. The first test runs before the deployment exists.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect

from tests.console.conftest import ACTION_TIMEOUT_MS, NARROW, FineTuned, screenshot
from tests.e2e.conftest import BASE_MODEL, Server, unique
from tuneforge.api.runtime import eventstream
from tuneforge.client import extension_get
from tuneforge.console.playground import json_lines

PAYLOAD = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


@pytest.fixture(scope="module")
def deployment(console_server: Server, fine_tuned: FineTuned) -> Iterator[str]:
    """The fine-tuned model behind a custom model deployment: its ARN."""
    bedrock = console_server.bedrock()
    arn: str = bedrock.create_custom_model_deployment(
        modelDeploymentName=unique("playground"), modelArn=fine_tuned.model_arn
    )["customModelDeploymentArn"]
    yield arn
    bedrock.delete_custom_model_deployment(customModelDeploymentIdentifier=arn)


def open_playground(page: Page, server: Server) -> None:
    page.goto(f"{server.url}/console/playground")
    expect(page.get_by_role("heading", name="Playground")).to_be_visible()


def answer(page: Page, column: str) -> Locator:
    """The latest answer in a column ("a" or "b"), once its stream has ended (the first request to a
    model waits for its on-demand engine to start)."""
    text = page.locator(f"#column-{column} li.assistant .text").last
    expect(text).not_to_have_attribute("data-state", "streaming", timeout=ACTION_TIMEOUT_MS)
    return text


def send(page: Page, message: str) -> None:
    page.get_by_label("Message").fill(message)
    page.get_by_label("Message").press("Enter")


def test_a_custom_model_without_a_deployment_is_offered_disabled_with_the_runtimes_reason(
    page: Page, console_server: Server, fine_tuned: FineTuned
) -> None:
    open_playground(page, console_server)
    option = page.locator("#model-a option", has_text=fine_tuned.model_name)
    expect(option).to_be_disabled()
    page.get_by_text("Models that cannot be invoked yet").click()
    row = page.get_by_role("table", name="Models that cannot be invoked").locator("tr", has_text=fine_tuned.model_name)
    expect(row).to_contain_text(
        f"ValidationException: Invocation of model ID {fine_tuned.model_arn} with on-demand throughput isn't supported."
    )
    expect(row).to_contain_text("CreateCustomModelDeployment")


def test_chat_with_the_fine_tuned_model_streams_its_category_and_keeps_the_history(
    page: Page, console_server: Server, fine_tuned: FineTuned, deployment: str
) -> None:
    open_playground(page, console_server)
    expect(page.locator("#column-b")).to_be_hidden()
    page.get_by_label("Model", exact=True).select_option(deployment)
    (first_ticket, first_category), (second_ticket, _) = fine_tuned.examples[:2]

    send(page, first_ticket)
    first = answer(page, "a")
    expect(first).to_have_attribute("data-state", "done")
    expect(first).to_have_text(first_category)
    chunks = int(first.get_attribute("data-chunks") or "0")
    assert chunks > 1, f"the answer {first_category!r} arrived in {chunks} chunk(s), not streamed"
    stats = page.locator("#column-a .stats")
    expect(stats).to_contain_text("stop: end_turn")
    first_input = int(stats.get_attribute("data-input-tokens") or "0")

    expect(page.locator("#column-b li")).to_have_count(0)

    send(page, second_ticket)
    expect(page.locator("#column-a li.assistant")).to_have_count(2)
    second = answer(page, "a")
    expect(second).to_have_attribute("data-state", "done")
    expect(second).not_to_have_text("")
    turns = page.locator("#column-a li.turn .text")
    expect(turns).to_have_text([first_ticket, first_category, second_ticket, second.inner_text()])
    # The second request carried the first exchange: its prompt is longer by at least those turns.
    second_input = int(stats.get_attribute("data-input-tokens") or "0")
    assert second_input > first_input + 2
    # Metered like API calls: the deployment's usage counts both requests and exactly their prompts.
    report = extension_get(console_server.url, console_server.settings.region, "/usage")
    [usage] = [d for d in report["customModelDeployments"] if d["customModelDeploymentArn"] == deployment]
    assert (usage["invocations"], usage["inputTokens"]) == (2, first_input + second_input), usage


def test_two_models_answer_the_same_prompt_side_by_side(
    page: Page, console_server: Server, fine_tuned: FineTuned, deployment: str
) -> None:
    open_playground(page, console_server)
    page.get_by_label("Compare two models side by side").check()
    page.get_by_label("Model", exact=True).select_option(BASE_MODEL)
    page.get_by_label("Second model").select_option(deployment)
    page.get_by_label("Max tokens").fill("12")
    ticket, category = fine_tuned.examples[2]
    send(page, ticket)
    base, tuned = answer(page, "a"), answer(page, "b")
    expect(tuned).to_have_attribute("data-state", "done")
    expect(tuned).to_have_text(category)
    expect(base).to_have_attribute("data-state", "done")
    expect(base).not_to_have_text("")
    expect(page.locator("#column-a .stats")).to_contain_text("out")
    screenshot(page, "playground")

    page.set_viewport_size(NARROW)  # type: ignore[arg-type]
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= NARROW["width"], f"the playground scrolls sideways at {NARROW['width']} px: {width} px wide"
    a, b = page.locator("#column-a").bounding_box(), page.locator("#column-b").bounding_box()
    assert a is not None and b is not None and b["y"] >= a["y"] + a["height"], (a, b)
    screenshot(page, "playground-narrow")


def test_a_max_tokens_value_the_runtime_refuses_shows_the_api_message(page: Page, console_server: Server) -> None:
    open_playground(page, console_server)
    page.get_by_label("Model", exact=True).select_option(BASE_MODEL)
    limit = page.locator(f'#model-a option[value="{BASE_MODEL}"]').get_attribute("data-max-tokens")
    page.get_by_label("Max tokens").fill("100000")
    send(page, "hello")
    alert = page.locator("#column-a").get_by_role("alert")
    expect(alert).to_have_text(
        "ValidationException: 1 validation error detected: Value '100000' at 'inferenceConfig.maxTokens' "
        f"failed to satisfy constraint: Member must have value less than or equal to {limit}"
    )
    expect(answer(page, "a")).to_have_attribute("data-state", "failed")
    screenshot(page, "playground-error")


def test_markup_in_the_system_prompt_and_message_is_shown_as_text(page: Page, console_server: Server) -> None:
    open_playground(page, console_server)
    page.get_by_label("Model", exact=True).select_option(BASE_MODEL)
    page.get_by_label("System prompt").fill(PAYLOAD)
    page.get_by_label("Max tokens").fill("4")
    send(page, PAYLOAD)
    expect(answer(page, "a")).to_have_attribute("data-state", "done")
    expect(page.locator("#column-a li.system .text")).to_have_text(PAYLOAD)
    expect(page.locator("#column-a li.user .text")).to_have_text(PAYLOAD)
    expect(page.locator("#playground img")).to_have_count(0)
    expect(page.locator("#playground script")).to_have_count(0)
    assert page.evaluate("window.__pwned") is None


def test_the_stream_endpoint_refuses_a_request_without_the_csrf_token(console_server: Server) -> None:
    body = {"modelId": BASE_MODEL, "request": {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}}
    refused = httpx.post(f"{console_server.url}/console/playground/converse-stream", json=body)
    assert refused.status_code == 403 and "CSRF" in refused.text, refused.text


def test_the_event_stream_becomes_one_json_line_per_event_and_names_a_stream_exception_as_aws_does() -> None:
    frames = [
        eventstream.event("messageStart", {"role": "assistant"}),
        eventstream.event("contentBlockDelta", {"delta": {"text": "bil"}, "contentBlockIndex": 0}),
        eventstream.exception("modelStreamErrorException", "The custom model deployment d was deleted."),
    ]
    raw = b"".join(frames)

    async def split() -> AsyncIterator[bytes]:
        """The frames cut at arbitrary points, as a network may deliver them."""
        for start in range(0, len(raw), 7):
            yield raw[start : start + 7]

    async def read() -> list[bytes]:
        return [line async for line in json_lines(split())]

    # Its own thread: Playwright's sync API keeps an event loop running in this one.
    with ThreadPoolExecutor(1) as thread:
        lines = thread.submit(asyncio.run, read()).result()
    assert all(line.endswith(b"\n") for line in lines)
    assert [json.loads(line) for line in lines] == [
        {"event": "messageStart", "data": {"role": "assistant"}},
        {"event": "contentBlockDelta", "data": {"delta": {"text": "bil"}, "contentBlockIndex": 0}},
        {
            "event": "exception",
            "data": {"code": "ModelStreamErrorException", "message": "The custom model deployment d was deleted."},
        },
    ]
