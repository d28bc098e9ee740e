"""The job wizard and the job pages in a real browser against a real ``tuneforge serve``."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlencode

from playwright.sync_api import Page, expect

from tests.console.conftest import NARROW, SCREENSHOTS, screenshot
from tests.e2e.conftest import BASE_MODEL, ROLE, Server, unique, wait_for_status
from tuneforge.data.tasks import make_classification_task

INJECTION = "<script>window.__pwned=1</script>"
SMOLLM2 = "huggingface.smollm2-135m-instruct-v1:0:8k"
STUDENT = "tuneforge.forge-micro-v1:0:512"
TRAINING_TIMEOUT_MS = 600_000
"""A hang guard for a training run watched in the page, far above what the run takes."""


def write_jsonl(path: Path, records: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def training_points(page: Page) -> int:
    count: int = page.locator("#loss-chart circle.train-point").count()
    return count


def viewport_screenshot(page: Page, name: str) -> None:
    """The visible 1280x800 only: the size docs/console.md shows (a whole page is thousands of pixels)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def fits_narrow(page: Page) -> None:
    page.set_viewport_size(NARROW)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= NARROW["width"], f"{page.url} scrolls sideways at {NARROW['width']} px: {width} px wide"


def not_pwned(page: Page) -> None:
    assert page.evaluate("typeof window.__pwned") == "undefined"


def test_fine_tuning_job_through_the_wizard_from_an_uploaded_file(
    page: Page, console_server: Server, tmp_path: Path
) -> None:
    train, _ = make_classification_task(n_train=240, n_test=1, seed=3)
    train[0] = {**train[0], "prompt": train[0]["prompt"].replace("Ticket:", f"Ticket: {INJECTION}")}
    data = write_jsonl(tmp_path / "tickets.jsonl", train)
    name = unique("wizard-ft")

    page.goto(f"{console_server.url}/console/jobs")
    page.get_by_role("link", name="Create job").click()
    expect(page.get_by_text("Choose this when you can show the behaviour you want")).to_be_visible()
    page.get_by_label("Fine-tuning").check()
    screenshot(page, "wizard-approach")
    viewport_screenshot(page, "wizard-approach-view")
    page.get_by_role("button", name="Next").click()

    page.get_by_label("Base model").select_option(BASE_MODEL)
    page.get_by_role("button", name="Next").click()

    page.get_by_label("Upload a JSONL file").set_input_files(str(data))
    screenshot(page, "wizard-data")
    page.get_by_role("button", name="Upload and validate").click()
    expect(page.get_by_role("status").filter(has_text="Valid: 240 records")).to_be_visible()
    expect(page.get_by_role("table", name="Data preview")).to_contain_text(INJECTION)
    expect(page.get_by_text("Estimated cost")).to_be_visible()
    screenshot(page, "wizard-validation")
    viewport_screenshot(page, "wizard-validation-view")
    page.get_by_role("button", name="Next").click()

    epochs = page.get_by_label("epochCount")
    assert epochs.get_attribute("min") is not None and epochs.get_attribute("max") is not None
    epochs.fill("1")
    page.get_by_label("batchSize").fill("4")
    page.get_by_label("seed").fill("11")
    screenshot(page, "wizard-hyperparameters")
    viewport_screenshot(page, "wizard-hyperparameters-view")
    page.get_by_role("button", name="Next").click()

    page.get_by_label("Job name").fill(name)
    page.get_by_label("Custom model name").fill(name)
    page.get_by_label("Output location (S3 URI)").fill(f"s3://console/out/{name}/")
    page.get_by_label("Job tag key (optional)").fill("team")
    page.get_by_label("Job tag value").fill("support")
    page.get_by_role("button", name="Review").click()

    request = json.loads(page.locator("#request-json").inner_text())
    assert request["jobName"] == name and request["baseModelIdentifier"] == BASE_MODEL, request
    assert request["hyperParameters"] == {"epochCount": "1", "batchSize": "4", "seed": "11"}, request
    assert request["trainingDataConfig"]["s3Uri"].startswith("s3://tuneforge/console-uploads/"), request
    assert request["jobTags"] == [{"key": "team", "value": "support"}], request
    expect(page.locator("#boto3-code")).to_contain_text("bedrock.create_model_customization_job(")
    expect(page.locator("#cli-code")).to_contain_text(f"tuneforge jobs create \\\n  --name {name}")
    screenshot(page, "wizard-review")
    viewport_screenshot(page, "wizard-review-view")
    page.get_by_role("button", name="Create job").click()

    expect(page.get_by_role("heading", name=name)).to_be_visible()
    status = page.locator("#job-status")
    page.wait_for_function(
        "document.querySelectorAll('#loss-chart circle.train-point').length >= 1",
        timeout=TRAINING_TIMEOUT_MS,
    )
    expect(status).to_have_text("InProgress")
    first = training_points(page)
    page.wait_for_function(
        f"document.querySelectorAll('#loss-chart circle.train-point').length > {first}",
        timeout=TRAINING_TIMEOUT_MS,
    )
    second = training_points(page)
    assert second > first
    screenshot(page, "job-training")
    page.locator("#loss-chart").scroll_into_view_if_needed()
    viewport_screenshot(page, "job-training-view")
    expect(status).to_have_text("Completed", timeout=TRAINING_TIMEOUT_MS)
    page.reload()
    expect(page.get_by_role("link", name="trainingMetrics")).to_be_visible()
    href = page.get_by_role("link", name="trainingMetrics").get_attribute("href")
    download = page.request.get(f"{console_server.url}{href}")
    assert download.ok and b"step" in download.body()
    expect(page.get_by_text("team=support")).to_be_visible()
    screenshot(page, "job-completed")
    not_pwned(page)

    page.get_by_role("link", name=name).first.click()
    expect(page).to_have_url(f"{console_server.url}/console/custom-models/{name}")
    expect(page.get_by_role("heading", name=name)).to_be_visible()
    expect(page.get_by_label("Lineage").get_by_role("link", name=BASE_MODEL)).to_be_visible()

    page.goto(f"{console_server.url}/console/jobs")
    expect(page.get_by_role("table", name="Jobs").get_by_role("link", name=name)).to_be_visible()


def test_data_errors_show_by_line_and_injected_names_show_as_text(
    page: Page, console_server: Server, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": "Ticket: printer on fire", "completion": " hardware"})
        + "\n"
        + json.dumps({"prompt": f"Ticket: {INJECTION}"})
        + "\n"
        + "{not json\n"
    )
    start = urlencode({"type": "FINE_TUNING", "base": BASE_MODEL, "step": "data"})
    page.goto(f"{console_server.url}/console/jobs/new?{start}")
    page.get_by_label("Upload a JSONL file").set_input_files(str(bad))
    page.get_by_role("button", name="Upload and validate").click()
    errors = page.get_by_role("table", name="Data errors")
    expect(errors).to_be_visible()
    line_two = errors.locator("tbody tr").filter(has_text="completion").first
    expect(line_two.locator("td").first).to_have_text("2")
    expect(errors.locator("tbody tr").filter(has=page.locator("td", has_text="3")).first).to_be_visible()
    expect(page.get_by_role("table", name="Data preview")).to_contain_text(INJECTION)
    expect(page.get_by_role("button", name="Next")).to_have_count(0)
    screenshot(page, "wizard-data-errors")
    not_pwned(page)

    review = urlencode(
        {
            "type": "FINE_TUNING",
            "base": BASE_MODEL,
            "training_uri": "s3://console/anything.jsonl",
            "job_name": INJECTION,
            "model_name": "injected-model",
            "output_uri": "s3://console/out/",
            "role_arn": ROLE,
            "tag_key": "note",
            "tag_value": INJECTION,
            "step": "review",
        }
    )
    page.goto(f"{console_server.url}/console/jobs/new?{review}")
    expect(page.locator("#request-json")).to_contain_text(f'"jobName": "{INJECTION}"')
    expect(page.locator("#boto3-code")).to_contain_text(INJECTION)
    page.get_by_role("button", name="Create job").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("ValidationException")
    expect(alert).to_contain_text("jobName")
    expect(page.locator("#request-json")).to_contain_text(INJECTION)
    not_pwned(page)
    fits_narrow(page)

    out_of_range = review.replace("step=review", "hp_epochCount=0&step=review")
    page.goto(f"{console_server.url}/console/jobs/new?{out_of_range}")
    expect(page.get_by_role("alert")).to_contain_text("Hyperparameter epochCount value 0 is out of range")


def test_distillation_wizard_refuses_a_teacher_of_another_tokenizer(page: Page, console_server: Server) -> None:
    page.goto(f"{console_server.url}/console/jobs/new")
    page.get_by_label("Distillation").check()
    page.get_by_role("button", name="Next").click()
    page.get_by_label("Student model").select_option(STUDENT)
    page.get_by_role("button", name="Choose the teacher").click()

    smollm2 = page.get_by_role("radio", name=SMOLLM2)
    expect(smollm2).to_be_disabled()
    reason = page.locator(f"#{smollm2.get_attribute('aria-describedby')}")
    expect(reason).to_contain_text("cannot teach the student model")
    expect(reason).to_contain_text("same model family and tokenizer")
    expect(page.get_by_role("radio", name=BASE_MODEL)).to_be_enabled()
    screenshot(page, "wizard-distillation-teachers")
    viewport_screenshot(page, "wizard-distillation-teachers-view")

    forced = urlencode(
        {"type": "DISTILLATION", "base": STUDENT, "teacher": SMOLLM2, "confirm_models": "1", "step": "models"}
    )
    page.goto(f"{console_server.url}/console/jobs/new?{forced}")
    expect(page.get_by_role("alert")).to_contain_text("ValidationException: The teacher model")


def test_a_job_stopped_from_its_page_ends_stopped(page: Page, console_server: Server, tmp_path: Path) -> None:
    train, _ = make_classification_task(n_train=400, n_test=1, seed=5)
    store_uri = "s3://console/stop-train.jsonl"
    from tuneforge.storage import ObjectStore

    ObjectStore.from_settings(console_server.settings).write_bytes(
        store_uri, "".join(json.dumps(r) + "\n" for r in train).encode()
    )
    bedrock = console_server.bedrock()
    name = unique("console-stop")
    job_arn = bedrock.create_model_customization_job(
        jobName=name,
        customModelName=name,
        roleArn=ROLE,
        baseModelIdentifier=BASE_MODEL,
        trainingDataConfig={"s3Uri": store_uri},
        outputDataConfig={"s3Uri": f"s3://console/out/{name}/"},
        hyperParameters={"epochCount": "50"},
    )["jobArn"]
    job_id = job_arn.rsplit("/", 1)[1]
    page.goto(f"{console_server.url}/console/jobs/{job_id}")
    page.wait_for_function(
        "document.querySelectorAll('#loss-chart circle.train-point').length >= 1", timeout=TRAINING_TIMEOUT_MS
    )
    page.get_by_role("button", name="Stop job").click()
    expect(page.locator("#job-status")).to_have_text("Stopped", timeout=TRAINING_TIMEOUT_MS)
    assert wait_for_status(bedrock, job_arn, ("Stopped",))["status"] == "Stopped"
    page.reload()
    expect(page.get_by_role("button", name="Stop job")).to_have_count(0)
    fits_narrow(page)
    page.goto(f"{console_server.url}/console/jobs")
    fits_narrow(page)
