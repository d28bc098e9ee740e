from __future__ import annotations

import base64
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from tuneforge.api.app import create_app
from tuneforge.settings import Settings

ERROR_TYPE = "x-amzn-ErrorType"
JOB_BODY = {
    "jobName": "encoded-arn-job",
    "customModelName": "encoded-arn-model",
    "roleArn": "arn:aws:iam::123456789012:role/BedrockRole",
    "baseModelIdentifier": "tuneforge.forge-micro-v1:0:512",
    "trainingDataConfig": {"s3Uri": "s3://bucket/train.jsonl"},
    "outputDataConfig": {"s3Uri": "s3://bucket/out/"},
}


@pytest.fixture
def client(fast_tmp: Path) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=fast_tmp / "data"), run_supervisor=False)
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        yield test_client


def error_code(response: Any) -> str:
    """The part of x-amzn-ErrorType botocore keeps as the error code."""
    return str(response.headers[ERROR_TYPE]).split(":", 1)[0]


def test_api_process_serves_foundation_models_without_importing_torch(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from fastapi.testclient import TestClient
        from tuneforge.api.app import create_app

        with TestClient(create_app(run_supervisor=False), base_url="http://127.0.0.1") as client:
            response = client.get("/foundation-models")
        assert response.status_code == 200, response.text
        assert response.json()["modelSummaries"], response.text
        heavy = sorted(name for name in ("torch", "transformers", "peft", "safetensors") if name in sys.modules)
        print("HEAVY=" + ",".join(heavy))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    env["TUNEFORGE_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY=\n" in result.stdout, f"the API process imported {result.stdout.strip()}"
    assert (tmp_path / "data" / "tuneforge.db").is_file()


def test_foundation_models_lists_builtin_models(client: TestClient) -> None:
    response = client.get("/foundation-models")
    assert response.status_code == 200
    ids = [m["modelId"] for m in response.json()["modelSummaries"]]
    assert "tuneforge.forge-micro-v1:0:512" in ids


def test_unknown_route_is_unknown_operation_404(client: TestClient) -> None:
    response = client.get("/no-such-operation")
    assert response.status_code == 404
    assert response.headers[ERROR_TYPE].startswith("UnknownOperationException")
    assert error_code(response) == "UnknownOperationException"


def test_percent_encoded_job_arn_with_slashes_reaches_handler(client: TestClient) -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:model-customization-job/x/abc"
    encoded = "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Amodel-customization-job%2Fx%2Fabc"
    path = f"/model-customization-jobs/{encoded}"
    assert quote(arn, safe="") == encoded
    response = client.get(path)
    assert response.status_code == 404
    assert error_code(response) == "ResourceNotFoundException"
    assert arn in response.json()["message"]


def test_created_job_is_found_by_its_percent_encoded_arn(client: TestClient) -> None:
    created = client.post("/model-customization-jobs", json=JOB_BODY)
    assert created.status_code == 201, created.text
    arn = created.json()["jobArn"]
    assert "/" in arn
    response = client.get(f"/model-customization-jobs/{quote(arn, safe='')}")
    assert response.status_code == 200, response.text
    assert response.json()["jobName"] == "encoded-arn-job"
    assert response.json()["jobArn"] == arn


@pytest.mark.parametrize("raw", [b"this is not json", b'{"jobName": ', b"\xff\xfe"])
def test_create_job_with_non_json_body_is_validation_exception(client: TestClient, raw: bytes) -> None:
    response = client.post("/model-customization-jobs", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert error_code(response) == "ValidationException"
    assert response.json()["message"] == "The request body is not valid JSON"


def test_create_job_with_json_array_body_is_validation_exception(client: TestClient) -> None:
    response = client.post("/model-customization-jobs", content=b"[]", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert error_code(response) == "ValidationException"
    assert response.json()["message"] == "The request body must be a JSON object"


def test_list_jobs_with_next_token_offset_beyond_int64_is_a_client_error(fast_tmp: Path) -> None:
    raw = b'{"offset": 100000000000000000000000}'
    app = create_app(Settings(data_dir=fast_tmp / "data"), run_supervisor=False)
    with TestClient(app, raise_server_exceptions=False, base_url="http://127.0.0.1") as test_client:
        response = test_client.get(
            "/model-customization-jobs", params={"nextToken": base64.urlsafe_b64encode(raw).decode()}
        )
    assert response.status_code == 400
    assert error_code(response) == "ValidationException"


@pytest.fixture
def live_server(fast_tmp: Path) -> Iterator[tuple[str, int]]:
    """The real app under uvicorn on a thread, with one route that fails unexpectedly on each surface."""
    import threading
    import time

    import uvicorn

    from tuneforge.demo import free_port

    app = create_app(Settings(data_dir=fast_tmp / "data"), run_supervisor=False)

    def fail() -> None:
        raise RuntimeError("a defect in a route")

    app.add_api_route("/fail", fail)
    app.add_api_route("/v1/fail", fail)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(timeout=30)


def http_exchange(sock: Any, path: str) -> tuple[int, dict[str, str], bytes]:
    """One request on an open connection, read to the end of its response (Content-Length framed)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before the response to {path}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed inside the response to {path}"
        body += chunk
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(("failing", "then"), [("/fail", "/foundation-models"), ("/v1/fail", "/v1/models")])
def test_connection_stays_usable_after_an_unexpected_500(live_server: tuple[str, int], failing: str, then: str) -> None:
    import json
    import socket

    with socket.create_connection(live_server, timeout=30) as sock:
        status, headers, body = http_exchange(sock, failing)
        assert status == 500
        if failing.startswith("/v1/"):
            assert json.loads(body)["error"]["type"] == "server_error"
        else:
            assert headers[ERROR_TYPE.lower()].startswith("InternalServerException")
        assert headers.get("connection") != "close"
        status, _, _ = http_exchange(sock, then)
        assert status == 200


def test_an_anonymous_server_answers_only_to_loopback_host_names(client: TestClient, fast_tmp: Path) -> None:
    """DNS rebinding: a page whose name the attacker re-points at 127.0.0.1 is same-origin to the
    browser and sends no Origin on a GET; it must not read the jobs and models of an anonymous server."""
    for host in ("127.0.0.1:8000", "localhost", "[::1]:8000"):
        assert client.get("/foundation-models", headers={"host": host}).status_code == 200, host
    rebound = client.get("/foundation-models", headers={"host": "attacker.example:8000"})
    assert rebound.status_code == 403 and error_code(rebound) == "AccessDeniedException"
    assert "loopback host name" in rebound.json()["message"]
    openai = client.get("/v1/models", headers={"host": "attacker.example"})
    assert openai.status_code == 403 and openai.json()["error"]["code"] == "forbidden_host"
    assert client.get("/healthz", headers={"host": "attacker.example"}).status_code == 200, "probes stay open"
    keyed = Settings(data_dir=fast_tmp / "keyed", access_keys={"AK": "SK"}, api_keys=["sk-good"])
    with TestClient(create_app(keyed, run_supervisor=False), base_url="http://127.0.0.1") as signed:
        answered = signed.get("/v1/models", headers={"host": "proxy.example", "authorization": "Bearer sk-good"})
        assert answered.status_code == 200, "a credential the page cannot have passes whatever the name"
