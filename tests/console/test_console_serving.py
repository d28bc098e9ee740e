"""The console's serving pages: custom models, provisioned throughput, deployments, usage, the billing banner.

One flow per test, on the session's fine-tuned model (trained once through boto3): training a model
costs CI minutes, so the steps of one workflow share a test.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from urllib.parse import quote

import pytest
from botocore.exceptions import ClientError
from playwright.sync_api import Browser, Page, expect

from tests.console.conftest import NARROW, FineTuned, screenshot
from tests.e2e.conftest import BASE_MODEL, Server, unique
from tuneforge.console.models import artifact_folders, tar_stream

SCRIPT = "<script>window.__pwned=1</script>"
IMG = "<img src=x onerror=window.__pwned=1>"
"""A path segment cannot hold the ``/`` of ``</script>``: the model-name page gets the handler kind."""
IN_SERVICE_TIMEOUT_MS = 180_000
"""A hang guard for a replica loading forge-small: far above what it takes."""
REFRESH_TIMEOUT_MS = 60_000
"""A hang guard for the banner's 5-second refresh."""


def test_custom_model_lineage_download_throughput_and_banner(
    page: Page, console_server: Server, fine_tuned: FineTuned
) -> None:
    url = console_server.url
    page.goto(f"{url}/console/custom-models")
    page.get_by_role("table", name="Custom models").get_by_role("link", name=fine_tuned.model_name).click()
    expect(page.get_by_role("heading", name=fine_tuned.model_name)).to_be_visible()
    lineage = page.get_by_label("Lineage")
    expect(lineage.get_by_role("link", name=BASE_MODEL)).to_be_visible()
    job_id = fine_tuned.job_arn.rsplit("/", 1)[-1]
    expect(lineage.get_by_role("link", name=fine_tuned.model_name)).to_have_attribute("href", f"/console/jobs/{job_id}")
    expect(lineage.get_by_text("s3://console/train.jsonl")).to_be_visible()
    expect(page.get_by_role("table", name="Hyperparameters").get_by_text("seed", exact=True)).to_be_visible()
    screenshot(page, "custom-model")

    with page.expect_download() as download:
        page.get_by_role("link", name="Download the LoRA adapter").click()
    archive = Path(download.value.path()).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = tar.getnames()
        weights = tar.extractfile(f"{fine_tuned.model_name}-adapter/adapter_model.safetensors")
        assert weights is not None and len(weights.read()) > 1000, names
    assert f"{fine_tuned.model_name}-adapter/adapter_config.json" in names, names

    # Buy provisioned throughput: nothing is created before the cost is confirmed.
    page.get_by_role("link", name="Buy provisioned throughput").click()
    name = unique("console-pt")
    page.get_by_label("Name").fill(name)
    expect(page.get_by_label("Model", exact=True)).to_have_value(fine_tuned.model_arn)
    page.get_by_label("Model units").fill("1")
    page.get_by_role("button", name="Review cost").click()
    expect(page.get_by_role("heading", name="Confirm the cost")).to_be_visible()
    price = console_server.settings.price_per_model_unit_hour
    expect(page.get_by_test_id("price-hour")).to_have_text(f"${price:.2f}")
    expect(page.get_by_test_id("price-day")).to_have_text(f"${price * 24:.2f}")
    expect(page.get_by_label("Cost", exact=True)).to_contain_text("stops when you delete it")
    screenshot(page, "throughput-confirm")
    bedrock = console_server.bedrock()
    listed = bedrock.list_provisioned_model_throughputs(nameContains=name)["provisionedModelSummaries"]
    assert listed == [], "the review page must not create anything"
    page.get_by_label("I understand").check()
    page.get_by_role("button", name="Confirm and buy").click()
    expect(page).to_have_url(f"{url}/console/throughput/{name}")
    expect(page.get_by_test_id("pt-status")).to_have_text("InService", timeout=IN_SERVICE_TIMEOUT_MS)
    banner = page.locator("#billing")
    expect(banner).to_contain_text(name)
    expect(banner).to_contain_text(f"${price:,.2f}/hour")
    screenshot(page, "throughput")

    # Chat with it in the playground: the streamed answer is the fine-tuned behaviour (the category).
    pt_arn = bedrock.get_provisioned_model_throughput(provisionedModelId=name)["provisionedModelArn"]
    ticket, category = fine_tuned.examples[0]
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Playground").click()
    expect(page.get_by_role("heading", name="Playground")).to_be_visible()
    page.get_by_label("Model", exact=True).select_option(pt_arn)
    page.get_by_label("Message").fill(ticket)
    page.get_by_label("Message").press("Enter")
    reply = page.locator("#column-a li.assistant .text").last
    expect(reply).to_have_attribute("data-state", "done")
    expect(reply).to_have_text(category)
    chunks = int(reply.get_attribute("data-chunks") or "0")
    assert chunks > 1, f"the answer {category!r} arrived in {chunks} chunk(s), not streamed"

    # The model it serves cannot be deleted: the page shows the API's own refusal.
    with pytest.raises(ClientError) as refused:
        bedrock.delete_custom_model(modelIdentifier=fine_tuned.model_name)
    error = refused.value.response["Error"]
    page.goto(f"{url}/console/custom-models/{fine_tuned.model_name}")
    page.get_by_role("button", name="Delete custom model").click()
    expect(page.get_by_role("alert")).to_have_text(f"{error['Code']}: {error['Message']}")

    page.goto(f"{url}/console/usage")
    row = page.get_by_role("table", name="Provisioned throughput usage").get_by_role("row", name=name)
    expect(row).to_contain_text("InService")
    expect(page.get_by_role("img", name="Cost per deployment")).to_contain_text(name)
    screenshot(page, "usage")

    # Delete it in one tab; the banner of a page already open in another clears by itself.
    watcher = page.context.new_page()
    watcher.goto(f"{url}/console/catalog")
    expect(watcher.locator("#billing")).to_contain_text(name)
    page.goto(f"{url}/console/throughput/{name}")
    page.get_by_role("button", name="Delete provisioned throughput").click()
    expect(page).to_have_url(f"{url}/console/throughput")
    expect(page.locator("#billing")).not_to_contain_text(name)
    expect(watcher.locator("#billing")).not_to_contain_text(name, timeout=REFRESH_TIMEOUT_MS)
    expect(watcher.locator("#billing")).to_have_class("billing clear", timeout=REFRESH_TIMEOUT_MS)


def test_deployment_created_and_deleted_from_the_console(
    page: Page, console_server: Server, fine_tuned: FineTuned
) -> None:
    url = console_server.url
    name = unique("console-dep")
    page.goto(f"{url}/console/deployments")
    page.get_by_role("link", name="Deploy a custom model").click()
    page.get_by_label("Name").fill(name)
    page.get_by_label("Custom model").select_option(fine_tuned.model_arn)
    price = console_server.settings.token_price(BASE_MODEL)
    expect(page.get_by_label("Custom model")).to_contain_text(f"${price.input:g} / ${price.output:g} per 1,000")
    page.get_by_label("Description").fill(SCRIPT)
    page.get_by_label("Monthly budget").fill("5")
    page.get_by_role("button", name="Create deployment").click()
    expect(page).to_have_url(f"{url}/console/deployments/{name}")
    facts = page.get_by_label("Deployment")
    expect(facts.get_by_text(SCRIPT)).to_be_visible()
    expect(facts).to_contain_text("$5.00")
    expect(facts).to_contain_text(f"${price.input:g} input")
    assert page.evaluate("window.__pwned") is None
    expect(page.locator("#billing")).to_contain_text(name)
    screenshot(page, "deployment")

    page.get_by_role("button", name="Delete deployment").click()
    expect(page).to_have_url(f"{url}/console/deployments")
    expect(page.get_by_role("table", name="Deployments")).not_to_contain_text(name)
    expect(page.locator("#billing")).not_to_contain_text(name)
    with pytest.raises(ClientError):
        console_server.bedrock().get_custom_model_deployment(customModelDeploymentIdentifier=name)


def test_script_in_a_throughput_name_tag_and_a_model_name_shows_as_text(page: Page, console_server: Server) -> None:
    page.goto(f"{console_server.url}/console/throughput/new")
    page.get_by_label("Name").fill(SCRIPT)
    page.get_by_label("Tag key (optional)").fill("note")
    page.get_by_label("Tag value").fill(SCRIPT)
    page.get_by_role("button", name="Review cost").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("ValidationException")
    expect(alert).to_contain_text(f"Value '{SCRIPT}' at 'provisionedModelName'")
    expect(alert).to_contain_text(f"Value '{SCRIPT}' at 'tags.1.member.value'")
    expect(page.get_by_label("Name")).to_have_value(SCRIPT)
    assert page.evaluate("window.__pwned") is None

    page.goto(f"{console_server.url}/console/custom-models/{quote(IMG, safe='')}")
    expect(page.get_by_role("alert")).to_have_text(f"ResourceNotFoundException: The custom model {IMG} does not exist.")
    assert page.evaluate("window.__pwned") is None


def test_serving_pages_fit_a_narrow_window(browser: Browser, console_server: Server) -> None:
    context = browser.new_context(viewport=NARROW)  # type: ignore[arg-type]
    try:
        page = context.new_page()
        for path in (
            "custom-models",
            "throughput",
            "throughput/new",
            "deployments",
            "deployments/new",
            "usage",
        ):
            page.goto(f"{console_server.url}/console/{path}")
            expect(page.get_by_role("heading", level=1)).to_be_visible()
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= NARROW["width"], f"/console/{path} scrolls sideways at {NARROW['width']} px: {width} px"
    finally:
        context.close()


def test_adapter_archive_streams_every_file_intact(tmp_path: Path) -> None:
    folder = tmp_path / "adapter"
    (folder / "nested").mkdir(parents=True)
    files = {"adapter_config.json": b"{}", "nested/weights.bin": bytes(range(256)) * 5000, "empty": b""}
    for relative, data in files.items():
        (folder / relative).write_bytes(data)
    (folder / "outside").symlink_to(tmp_path)
    archive = b"".join(tar_stream(folder, "m-adapter"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert sorted(tar.getnames()) == sorted(f"m-adapter/{name}" for name in files)
        for relative, data in files.items():
            member = tar.extractfile(f"m-adapter/{relative}")
            assert member is not None and member.read() == data


def test_downloads_only_offer_folders_of_weights_inside_the_models_dir(tmp_path: Path) -> None:
    models_dir, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    for root in (models_dir / "m1", elsewhere):
        (root / "adapter").mkdir(parents=True)
        (root / "merged").mkdir()
        (root / "secrets").mkdir()
    assert artifact_folders(models_dir, str(models_dir / "m1")) == {
        "adapter": models_dir.resolve() / "m1" / "adapter",
        "merged": models_dir.resolve() / "m1" / "merged",
    }
    assert artifact_folders(models_dir, str(elsewhere)) == {}
    assert artifact_folders(models_dir, str(models_dir / "m1" / ".." / ".." / "elsewhere")) == {}
