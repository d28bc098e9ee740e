"""SigV4 on the Bedrock surface, verified with botocore's signer against configured keys."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.e2e.conftest import Server, make_server
from tuneforge.settings import Settings, child_environment

pytestmark = pytest.mark.e2e

KEYS = {"AKIDTUNEFORGE": "correct-horse-battery"}


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = make_server(tmp_path_factory.mktemp("locked"), access_keys=KEYS, allow_anonymous=False)
    server.start()
    yield server
    server.stop()


def client(server: Server, key: str, secret: str, **config: Any) -> Any:
    return boto3.client(
        "bedrock",
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, **config),
    )


def test_signed_requests_with_a_configured_key_succeed(locked_server: Server) -> None:
    bedrock = client(locked_server, "AKIDTUNEFORGE", KEYS["AKIDTUNEFORGE"])
    assert bedrock.list_foundation_models(byProvider="tuneforge")["modelSummaries"]
    arn = "arn:aws:bedrock:us-east-1:123456789012:model-customization-job/x/abcdefghijkl"
    with pytest.raises(ClientError) as exc:  # percent-encoded ARN path still verifies
        bedrock.get_model_customization_job(jobIdentifier=arn)
    assert exc.value.response["Error"]["Code"] == "ResourceNotFoundException"


@pytest.mark.parametrize(
    ("key", "secret", "config", "message"),
    [
        ("AKIDTUNEFORGE", "wrong-secret", {}, "signature we calculated does not match"),
        ("AKIDSTRANGER", "whatever", {}, "unknown key AKIDSTRANGER"),
        ("AKIDTUNEFORGE", "x", {"signature_version": UNSIGNED}, "Missing Authentication Token"),
    ],
)
def test_bad_credentials_are_access_denied_and_change_nothing(
    locked_server: Server, key: str, secret: str, config: dict[str, Any], message: str
) -> None:
    bedrock = client(locked_server, key, secret, **config)
    with pytest.raises(ClientError) as exc:
        bedrock.create_model_customization_job(
            jobName="intruder",
            customModelName="intruder",
            roleArn="arn:aws:iam::123456789012:role/x",
            baseModelIdentifier="tuneforge.forge-small-v1:0:512",
            trainingDataConfig={"s3Uri": "s3://x/train.jsonl"},
            outputDataConfig={"s3Uri": "s3://x/out/"},
        )
    assert exc.value.response["Error"]["Code"] == "AccessDeniedException"
    assert message in exc.value.response["Error"]["Message"]
    good = client(locked_server, "AKIDTUNEFORGE", KEYS["AKIDTUNEFORGE"])
    assert good.list_model_customization_jobs(nameContains="intruder")["modelCustomizationJobSummaries"] == []


def test_stale_timestamp_is_access_denied(tmp_path: Path) -> None:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from tuneforge.api.auth import verify_request
    from tuneforge.errors import AccessDeniedException

    settings = Settings(data_dir=tmp_path, access_keys=KEYS, allow_anonymous=False)
    request = AWSRequest(method="GET", url="http://127.0.0.1:8080/foundation-models", data=b"")
    SigV4Auth(Credentials("AKIDTUNEFORGE", KEYS["AKIDTUNEFORGE"]), "bedrock", "us-east-1").add_auth(request)
    headers = {k.lower(): v for k, v in request.headers.items()}
    headers["host"] = "127.0.0.1:8080"
    signed = dict(method="GET", url="http://127.0.0.1:8080/foundation-models", headers=headers, body=b"")
    assert verify_request(settings, **signed) == "AKIDTUNEFORGE"
    later = datetime.now(UTC) + timedelta(minutes=6)
    with pytest.raises(AccessDeniedException, match="Signature expired"):
        verify_request(settings, now=later, **signed)


def test_non_loopback_bind_without_keys_refuses_to_start(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli.main", "serve", "--host", "0.0.0.0", "--port", "0"],
        env=child_environment(settings),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2
    assert "non-loopback bind needs access keys" in result.stderr


def test_job_events_extension_is_signed_like_boto3(locked_server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneforge.client import ExtensionError
    from tuneforge.progress import fetch_events

    good = client(locked_server, "AKIDTUNEFORGE", KEYS["AKIDTUNEFORGE"])
    arn = good.create_model_customization_job(
        jobName="signed-events",
        customModelName="signed-events",
        roleArn="arn:aws:iam::123456789012:role/x",
        baseModelIdentifier="tuneforge.forge-small-v1:0:512",
        trainingDataConfig={"s3Uri": "s3://tests/train.jsonl"},
        outputDataConfig={"s3Uri": "s3://tests/out/"},
    )["jobArn"]
    good.stop_model_customization_job(jobIdentifier=arn)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTUNEFORGE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", KEYS["AKIDTUNEFORGE"])
    events = fetch_events(locked_server.url, "us-east-1", arn, 0)
    assert next(e["data"]["status"] for e in events if e["kind"] == "status") == "InProgress"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(ExtensionError, match="AccessDeniedException"):
        fetch_events(locked_server.url, "us-east-1", arn, 0)
