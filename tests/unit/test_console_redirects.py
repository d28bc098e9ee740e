"""The sign-in's ``next``: only console paths, and always a Location header the server can send."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tuneforge.api.app import create_app
from tuneforge.settings import Settings


@pytest.fixture
def client(fast_tmp: Path) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=fast_tmp / "data"), run_supervisor=False)
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("target", "location"),
    [
        ("/console/custom-models/caf\u00e9 \u2713", "/console/custom-models/caf%C3%A9%20%E2%9C%93"),
        ("/console/jobs\r\nSet-Cookie: x=1", "/console/jobs%0D%0ASet-Cookie:%20x=1"),
        ("/console/jobs?status=InProgress&nameContains=a%20b", "/console/jobs?status=InProgress&nameContains=a%20b"),
        ("//evil.example/console", "/console/catalog"),
        ("https://evil.example/console", "/console/catalog"),
    ],
)
def test_next_is_a_console_path_sent_percent_encoded(client: TestClient, target: str, location: str) -> None:
    response = client.get("/console/login", params={"next": target}, follow_redirects=False)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == location
