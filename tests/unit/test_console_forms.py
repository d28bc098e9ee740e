"""Odd form input reaches the API's own refusal, shown on the page, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tuneforge.api.app import create_app
from tuneforge.catalog.models import BUILTIN_MODELS
from tuneforge.settings import Settings


@pytest.fixture
def client(fast_tmp: Path) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=fast_tmp / "data"), run_supervisor=False)
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        yield test_client


@pytest.mark.parametrize("units", ["\u00b2", "9" * 5000, "1.5"])
def test_throughput_units_that_are_not_a_whole_number_get_the_apis_refusal(client: TestClient, units: str) -> None:
    page = client.get("/console/throughput/new")
    token = page.text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    form = {"csrf_token": token, "name": "pt-1", "model": BUILTIN_MODELS[0].model_id, "units": units}
    response = client.post("/console/throughput/review", data=form)
    assert response.status_code == 400, response.text
    assert "ValidationException" in response.text and 'role="alert"' in response.text
