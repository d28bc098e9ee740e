"""The console's session cookie: HttpOnly and SameSite=Strict always, Secure behind TLS."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tuneforge.api.app import create_app
from tuneforge.settings import Settings


@pytest.mark.parametrize(
    ("secure_cookies", "base_url", "secure"),
    [
        (False, "http://127.0.0.1", False),
        (True, "http://127.0.0.1", True),
        (False, "https://127.0.0.1", True),
    ],
)
def test_sign_in_cookie_is_secure_when_asked_or_over_https(
    fast_tmp: Path, secure_cookies: bool, base_url: str, secure: bool
) -> None:
    settings = Settings(data_dir=fast_tmp / "data", access_keys={"AKIDCOOKIE": "s3cret"}, secure_cookies=secure_cookies)
    with TestClient(create_app(settings, run_supervisor=False), base_url=base_url) as client:
        response = client.post(
            "/console/login",
            data={"access_key_id": "AKIDCOOKIE", "secret_access_key": "s3cret"},
            follow_redirects=False,
        )
    assert response.status_code == 303, response.text
    attributes = [part.strip().lower() for part in response.headers["set-cookie"].split(";")]
    assert attributes[0].startswith("tuneforge_console=")
    assert "httponly" in attributes
    assert "samesite=strict" in attributes
    assert ("secure" in attributes) is secure
