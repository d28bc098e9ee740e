"""The HTTP edge of a real server: cross-site requests, body caps, private state files, bad settings."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from botocore.exceptions import ClientError

from tests.e2e.conftest import Server, make_server, unique, wait_for_status
from tuneforge.data.tasks import make_classification_task, write_jsonl
from tuneforge.settings import Settings, child_environment

pytestmark = pytest.mark.e2e

MODEL = "tuneforge.forge-micro-v1:0:512"
THROUGHPUT = {"modelUnits": 1, "provisionedModelName": "cross-site", "modelId": MODEL}
CONVERSE = {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def edge_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default server: loopback, anonymous access allowed, no keys."""
    server = make_server(tmp_path_factory.mktemp("edge"))
    server.start()
    yield server
    server.stop()


def aws_code(response: httpx.Response) -> str:
    return str(response.headers["x-amzn-ErrorType"]).split(":", 1)[0]


def nothing_ran(server: Server) -> bool:
    """No provisioned throughput exists and no engine was started for an inference call."""
    throughputs = server.bedrock().list_provisioned_model_throughputs()["provisionedModelSummaries"]
    engines = server.settings.engines_dir
    return throughputs == [] and (not engines.exists() or not any(engines.iterdir()))


# -- cross-site requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [("/provisioned-model-throughput", THROUGHPUT), (f"/model/{MODEL}/converse", CONVERSE)],
)
def test_cross_site_text_plain_post_is_refused_and_changes_nothing(
    edge_server: Server, path: str, body: dict[str, Any]
) -> None:
    """What a page in the user's browser can send without a preflight, with and without its Origin."""
    for headers in ({"content-type": "text/plain;charset=UTF-8", "origin": EVIL}, {"content-type": "text/plain"}):
        response = httpx.post(f"{edge_server.url}{path}", content=json.dumps(body), headers=headers, timeout=10)
        assert response.status_code in (400, 403), response.text
        assert aws_code(response) in ("ValidationException", "AccessDeniedException")
    assert nothing_ran(edge_server)


def test_json_post_from_a_foreign_origin_is_refused(edge_server: Server) -> None:
    response = httpx.post(
        f"{edge_server.url}/provisioned-model-throughput", json=THROUGHPUT, headers={"origin": EVIL}, timeout=10
    )
    assert response.status_code == 403
    assert aws_code(response) == "AccessDeniedException"
    assert "origin 'http://evil.example'" in response.json()["message"]
    openai_response = httpx.post(
        f"{edge_server.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={"origin": EVIL},
        timeout=10,
    )
    assert openai_response.status_code == 403
    assert openai_response.json()["error"]["code"] == "forbidden_origin"
    assert nothing_ran(edge_server)


def test_text_plain_on_openai_route_is_an_openai_error(edge_server: Server) -> None:
    response = httpx.post(f"{edge_server.url}/v1/completions", content=b"{}", headers={"content-type": "text/plain"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unsupported_content_type"


def test_same_origin_and_allowlisted_origins_pass(tmp_path: Path) -> None:
    server = make_server(tmp_path, allowed_origins=["http://console.example:3000"])
    server.start()
    try:
        for origin in (server.url, "http://console.example:3000"):
            response = httpx.get(f"{server.url}/foundation-models", headers={"origin": origin})
            assert response.status_code == 200, (origin, response.text)
        rebound = f"http://evil.example:{server.settings.port}"  # DNS rebinding: Host matches, name is not loopback
        response = httpx.get(f"{server.url}/foundation-models", headers={"origin": rebound, "host": rebound[7:]})
        assert response.status_code == 403
    finally:
        server.stop()


def test_boto3_requests_without_content_type_still_pass_the_edge(edge_server: Server) -> None:
    """InvokeModel without contentType sends a body with no Content-Type: the route, not the edge, answers."""
    runtime = edge_server.bedrock_runtime()
    with pytest.raises(ClientError) as exc:
        runtime.invoke_model(modelId="tuneforge.no-such-model-v1:0", body=b'{"inputText": "hi"}')
    assert exc.value.response["Error"]["Code"] in ("ResourceNotFoundException", "ValidationException")
    assert "Content-Type" not in exc.value.response["Error"]["Message"]


# -- body caps ----------------------------------------------------------------------------------------


def test_fifty_megabyte_converse_prompt_is_refused_with_413_naming_the_limit(edge_server: Server) -> None:
    prompt = {"messages": [{"role": "user", "content": [{"text": "x" * (50 << 20)}]}]}
    with httpx.Client(timeout=60) as http:
        response = http.post(f"{edge_server.url}/model/{MODEL}/converse", json=prompt)
        assert response.status_code == 413
        assert aws_code(response) == "ValidationException"
        assert f"limit of {10 << 20} bytes" in response.json()["message"]
        assert "TUNEFORGE_MAX_INFERENCE_BODY_BYTES" in response.json()["message"]
        assert http.get(f"{edge_server.url}/healthz").status_code == 200  # the connection is still usable
    assert nothing_ran(edge_server)


def test_oversized_bodies_are_refused_through_boto3_and_openai(edge_server: Server) -> None:
    with pytest.raises(ClientError) as exc:
        edge_server.bedrock().create_provisioned_model_throughput(
            modelUnits=1, provisionedModelName="huge", modelId=MODEL, tags=[{"key": "k", "value": "v" * (2 << 20)}]
        )
    assert exc.value.response["Error"]["Code"] == "ValidationException"
    assert "TUNEFORGE_MAX_REQUEST_BODY_BYTES" in exc.value.response["Error"]["Message"]
    sdk = openai.OpenAI(base_url=f"{edge_server.url}/v1", api_key="placeholder", max_retries=0)
    with pytest.raises(openai.APIStatusError) as too_large:
        sdk.completions.create(model=MODEL, prompt="x" * (11 << 20))
    assert too_large.value.status_code == 413
    assert "TUNEFORGE_MAX_INFERENCE_BODY_BYTES" in str(too_large.value)
    assert nothing_ran(edge_server)


def test_chunked_body_past_the_cap_is_refused(edge_server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(3):
            yield b" " * (1 << 20)

    response = httpx.post(
        f"{edge_server.url}/provisioned-model-throughput",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413
    assert aws_code(response) == "ValidationException"


# -- state files are private ----------------------------------------------------------------------------


def test_state_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    (data_dir / "logs").mkdir(mode=0o755, parents=True)
    os.chmod(data_dir, 0o755)
    (data_dir / "logs" / "left-by-an-older-version.log").write_text("x")
    os.chmod(data_dir / "logs" / "left-by-an-older-version.log", 0o644)
    server = make_server(data_dir)
    server.start()
    try:
        train, _ = make_classification_task(n_train=16, n_test=1, seed=3)
        write_jsonl(tmp_path / "train.jsonl", train)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "tuneforge.cli.main",
                "data",
                "cp",
                str(tmp_path / "train.jsonl"),
                "s3://private/t.jsonl",
            ],
            env=child_environment(server.settings),
            check=True,
            capture_output=True,
        )
        bedrock = server.bedrock()
        name = unique("private")
        arn = bedrock.create_model_customization_job(
            jobName=name,
            customModelName=name,
            roleArn="arn:aws:iam::123456789012:role/x",
            baseModelIdentifier=MODEL,
            trainingDataConfig={"s3Uri": "s3://private/t.jsonl"},
            outputDataConfig={"s3Uri": "s3://private/out/"},
            hyperParameters={"epochCount": "1"},
        )["jobArn"]
        assert wait_for_status(bedrock, arn, ("Completed", "Failed"))["status"] == "Completed"
        open_to_others = sorted(
            f"{oct(stat.S_IMODE(path.lstat().st_mode))} {path.relative_to(tmp_path)}"
            for path in [data_dir, *data_dir.rglob("*")]
            if not path.is_symlink() and path.lstat().st_mode & 0o077
        )
        assert open_to_others == []
        assert (data_dir / "tuneforge.db").is_file() and any((data_dir / "objects").rglob("*.jsonl"))
    finally:
        server.stop()


# -- settings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [("TUNEFORGE_PORT", "abc"), ("TUNEFORGE_ACCESS_KEYS", "{not json"), ("TUNEFORGE_MAX_REQUEST_BODY_BYTES", "0")],
)
def test_serve_with_invalid_setting_prints_one_line_naming_it(tmp_path: Path, name: str, value: str) -> None:
    env = child_environment(Settings(data_dir=tmp_path))
    env[name] = value
    result = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli.main", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], result.stderr
