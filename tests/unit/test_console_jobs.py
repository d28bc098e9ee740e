"""The job wizard's server-side pieces: the upload cap, the request it builds, the loss chart, no torch."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from fastapi.testclient import TestClient

from tuneforge.api.app import create_app
from tuneforge.catalog.models import BUILTIN_MODELS
from tuneforge.console import jobs_wizard as wizard
from tuneforge.console.jobs_chart import loss_chart
from tuneforge.db.tables import Job, JobEvent, utcnow
from tuneforge.jobs.layout import DISTILLATION_REPORT, TRAINING_METRICS, job_folder
from tuneforge.jobs.service import CreateJobRequest
from tuneforge.services import Services
from tuneforge.settings import Settings

BASE = BUILTIN_MODELS[0]


@pytest.fixture
def services(fast_tmp: Path) -> Iterator[Services]:
    created = Services.create(Settings(data_dir=fast_tmp / "data", max_training_file_bytes=3 * wizard.UPLOAD_CHUNK))
    yield created
    created.close()


def test_upload_within_the_cap_lands_in_the_store_under_console_uploads(services: Services) -> None:
    data = b'{"prompt": "a", "completion": "b"}\n' * 1000
    uri = wizard.store_upload(services, io.BytesIO(data), "my data.jsonl")
    assert uri.startswith("s3://tuneforge/console-uploads/") and uri.endswith("/my-data.jsonl"), uri
    assert services.store.read_bytes(uri) == data


def test_upload_past_the_cap_is_refused_naming_the_setting_and_leaves_nothing(services: Services) -> None:
    with pytest.raises(wizard.UploadTooLarge, match="TUNEFORGE_MAX_TRAINING_FILE_BYTES"):
        wizard.store_upload(services, io.BytesIO(b"x" * (3 * wizard.UPLOAD_CHUNK + 1)), "big.jsonl")
    uploads = services.settings.objects_dir / wizard.UPLOAD_BUCKET / wizard.UPLOAD_PREFIX
    assert [p for p in uploads.rglob("*") if p.is_file()] == []


def test_request_sends_only_changed_hyperparameters_and_the_teacher(services: Services) -> None:
    state = wizard.WizardState.of(
        {
            "type": "DISTILLATION",
            "base": "tuneforge.forge-micro-v1:0:512",
            "teacher": BASE.model_id,
            "max_response": "32",
            "training_uri": "s3://bucket/train.jsonl",
            "output_uri": "s3://bucket/out/",
            "job_name": "j",
            "model_name": "m",
            "hp_epochCount": "1",
            "hp_batchSize": str(BASE.hyperparameter_specs("DISTILLATION")[1].default),
            "step": "review",
        }
    )
    student = services.catalog.get("tuneforge.forge-micro-v1:0:512")
    body = wizard.request_body(services, state, student)
    assert body["hyperParameters"] == {"epochCount": "1"}
    assert body["customizationConfig"] == {
        "distillationConfig": {
            "teacherModelConfig": {"teacherModelIdentifier": BASE.model_id, "maxResponseLengthForInference": 32}
        }
    }
    assert body["roleArn"] == "arn:aws:iam::123456789012:role/tuneforge"
    cli = wizard.cli_code(body)
    assert cli.startswith("# The CLI has no flags for customizationConfig"), cli
    assert "--hp epochCount=1" in cli


def test_teacher_choices_carry_the_job_services_refusal(services: Services) -> None:
    student = services.catalog.get("tuneforge.forge-micro-v1:0:512")
    choices = {c.model.model_id: c for c in wizard.teacher_choices(services, student)}
    assert choices[BASE.model_id].refusal is None
    smollm2 = choices["huggingface.smollm2-135m-instruct-v1:0:8k"]
    assert smollm2.refusal is not None and "cannot teach the student model" in smollm2.refusal


def test_loss_chart_scales_points_into_the_plot_and_puts_validation_at_the_last_step() -> None:
    chart = loss_chart([(1, 4.0), (5, 2.0), (10, 1.0)], [1.5], total_steps=10)
    assert [p.step for p in chart.training] == [1, 5, 10]
    assert chart.training[0].y == chart.top and chart.training[-1].y == chart.bottom
    assert chart.training[-1].x == chart.right == chart.validation[0].x
    assert chart.polyline.count(",") == 3


def test_console_preflight_in_the_api_process_does_not_import_torch(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from fastapi.testclient import TestClient
        from tokenizers import Tokenizer, models, pre_tokenizers
        from tuneforge.api.app import create_app
        from tuneforge.console.jobs_wizard import tokenizers_counter

        with TestClient(create_app(run_supervisor=False), base_url="http://127.0.0.1") as client:
            page = client.get("/console/jobs/new?type=FINE_TUNING&step=models")
        assert page.status_code == 200 and "Base model" in page.text, page.text
        folder = Path(sys.argv[1])
        tokenizer = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer.save(str(folder / "tokenizer.json"))
        assert tokenizers_counter(folder)("a b a") == 3
        heavy = sorted(name for name in ("torch", "transformers", "peft", "safetensors") if name in sys.modules)
        print("HEAVY=" + ",".join(heavy))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    env["TUNEFORGE_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY=\n" in result.stdout, f"the API process imported {result.stdout.strip()}"


@pytest.fixture
def client(fast_tmp: Path) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=fast_tmp / "data"), run_supervisor=False)
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        yield test_client


def completed_distillation(services: Services, report: dict[str, object]) -> Job:
    """A distillation job as its worker leaves it when done: Completed, progress events, its report."""
    services.store.write_bytes("s3://bucket/prompts.jsonl", b'{"prompt": "hi"}\n')
    job = services.jobs.create(
        CreateJobRequest(
            job_name="distil-1",
            custom_model_name="distilled-1",
            role_arn="arn:aws:iam::123456789012:role/r",
            base_model_identifier="tuneforge.forge-micro-v1:0:512",
            customization_type="DISTILLATION",
            training_uri="s3://bucket/prompts.jsonl",
            output_uri="s3://bucket/out/",
            customization_config={
                "distillationConfig": {"teacherModelConfig": {"teacherModelIdentifier": BASE.model_id}}
            },
        )
    )
    with services.db.session() as session:
        row = session.get(Job, job.id)
        assert row is not None
        row.status, row.phase, row.ended_at = "Completed", "done", utcnow()
        row.training_loss, row.validation_losses = 0.5, [0.75]
        for step, loss in ((1, 2.0), (2, 1.0)):
            data = {"step": step, "totalSteps": 2, "epoch": 0, "loss": loss, "learningRate": 0.001}
            data |= {"tokensPerSecond": 1234.5, "tokensSeen": 99, "mfu": 0.125}
            session.add(JobEvent(job_id=job.id, kind="progress", data=data))
    root = f"s3://bucket/out/{job_folder(job.id)}"
    services.store.write_bytes(f"{root}/{DISTILLATION_REPORT}", json.dumps(report).encode())
    services.store.write_bytes(f"{root}/{TRAINING_METRICS}", b"step_number,training_loss\n1,2.0\n")
    return job


def test_job_page_of_a_completed_distillation_shows_report_artifacts_and_stops_refreshing(client: TestClient) -> None:
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    report = {
        "summary": "student agrees with <b>teacher</b> on 4 of 5",
        "heldOutPrompts": 5,
        "agreement": {"student": 0.8},
        "speedup": 3.25,
        "teacher": {"parameters": 5_000_000, "generationTokensPerSecond": 100.0, "costPerMillionOutputTokens": 0.5},
        "student": {"parameters": 1_000_000, "generationTokensPerSecond": 325.0, "costPerMillionOutputTokens": 0.1},
    }
    job = completed_distillation(services, report)

    page = client.get(f"/console/jobs/{job.id}")
    assert page.status_code == 200, page.text
    text = page.text
    assert "Distillation report" in text and "80.0%" in text and "3.25\u00d7" in text
    assert "student agrees with &lt;b&gt;teacher&lt;/b&gt; on 4 of 5" in text
    assert "1,234.5" in text and "12.50%" in text
    assert text.count('class="train-point"') == 2 and text.count('class="validation-point"') == 1
    assert "Stop job" not in text and 'data-refresh="/console/jobs/' not in text
    live = client.get(f"/console/jobs/{job.id}/live")
    assert live.headers.get("X-Refresh-Stop") == "1"

    found = re.search(r'href="(/console/objects\?uri=[^"]+)" download>trainingMetrics<', text)
    assert found, text
    assert unquote(found.group(1)).endswith(f"s3://bucket/out/{job_folder(job.id)}/{TRAINING_METRICS}")
    download = client.get(found.group(1))
    assert download.status_code == 200 and download.content.startswith(b"step_number")
    assert "(not written)" in text  # the report's siblings this test did not write


@pytest.mark.parametrize("uri", ["/etc/passwd", "file:///etc/passwd", "s3://bucket/../../../etc/passwd"])
def test_downloads_are_confined_to_the_object_store(client: TestClient, uri: str) -> None:
    response = client.get("/console/objects", params={"uri": uri})
    assert response.status_code == 400, response.text
    assert "ValidationException" in response.text


def test_wizard_preview_never_shows_the_servers_own_files(client: TestClient) -> None:
    """The console signing key lies in the data dir, a root the API accepts training paths from."""
    settings: Settings = client.app.state.services.settings  # type: ignore[attr-defined]
    key_file = settings.data_dir / "console.key"
    object_uri = "s3://bucket/visible.jsonl"
    client.app.state.services.store.write_bytes(object_uri, b'{"prompt": "visible line", "completion": "b"}\n')  # type: ignore[attr-defined]
    wizard_state = {"step": "validate", "type": "FINE_TUNING", "base": BASE.model_id}

    secret = client.get("/console/jobs/new", params={**wizard_state, "training_uri": str(key_file)})
    assert secret.status_code == 200, secret.text
    assert 'aria-label="Data preview"' not in secret.text
    # The store itself refuses tuneforge's state files as data, so the page shows the API's refusal.
    assert "one of tuneforge&#39;s own state files" in secret.text, secret.text[-2000:]

    shown = client.get("/console/jobs/new", params={**wizard_state, "training_uri": object_uri})
    assert 'aria-label="Data preview"' in shown.text and "visible line" in shown.text


def test_chunked_upload_past_the_cap_is_refused_without_reading_the_rest(fast_tmp: Path) -> None:
    """No Content-Length to refuse up front: the body is counted as it streams in, and reading stops."""
    chunk, chunks = 64 * 1024, 64
    sent = 0

    async def body(boundary: str) -> AsyncIterator[bytes]:
        nonlocal sent
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'.encode()
        for _ in range(chunks):
            sent += 1
            yield b"x" * chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    async def upload(app: Any, cookie: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as streaming:
            return await streaming.post(
                "/console/jobs/new/upload",
                content=body("b0undary"),
                headers={"content-type": "multipart/form-data; boundary=b0undary", "cookie": cookie},
            )

    app = create_app(Settings(data_dir=fast_tmp / "data", max_training_file_bytes=4 * chunk), run_supervisor=False)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        page = client.get("/console/jobs/new", params={"step": "data"})
        cookie = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
        response = asyncio.run(upload(app, cookie))
    assert page.status_code == 200
    assert "content-length" not in response.request.headers
    assert response.status_code == 200, response.text
    assert "TUNEFORGE_MAX_TRAINING_FILE_BYTES" in response.text
    assert sent < chunks, f"the server read all {sent} chunks of a body past its cap"
