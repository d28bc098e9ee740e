"""Console request bodies: capped before any form parser spools them, as the API's are."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tuneforge.api.app import create_app
from tuneforge.settings import Settings


@pytest.fixture
def client(fast_tmp: Path) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=fast_tmp / "data", max_request_body_bytes=64 * 1024), run_supervisor=False)
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        yield test_client


def test_a_file_part_sent_to_a_console_form_past_the_cap_is_refused_unread(client: TestClient) -> None:
    files = {"file": ("big.bin", b"x" * (256 * 1024), "application/octet-stream")}
    response = client.post("/console/logout", files=files)
    assert response.status_code == 413, response.text
    assert "TUNEFORGE_MAX_REQUEST_BODY_BYTES" in response.text


def test_console_forms_within_the_cap_still_reach_their_routes(client: TestClient) -> None:
    page = client.get("/console/catalog")
    token = page.text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    response = client.post("/console/logout", data={"csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/console/login"


def test_the_open_console_answers_only_to_a_loopback_host(fast_tmp: Path) -> None:
    """DNS rebinding: another site's name pointed at 127.0.0.1 is same-origin to the browser."""
    app = create_app(Settings(data_dir=fast_tmp / "data"), run_supervisor=False)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get("/console/catalog").status_code == 200
        assert client.get("/console/catalog", headers={"host": "localhost:8000"}).status_code == 200
        assert client.get("/console/catalog", headers={"host": "[::1]:8000"}).status_code == 200
        rebound = client.get("/console/catalog", headers={"host": "attacker.example:8000"})
        assert rebound.status_code == 403 and "loopback" in rebound.text
        download = client.get("/console/objects", params={"uri": "s3://b/k"}, headers={"host": "attacker.example"})
        assert download.status_code == 403
