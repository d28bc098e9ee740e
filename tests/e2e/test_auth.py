"""SigV4 on the Bedrock surface, verified with botocore's signer against configured keys."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import httpx
import openai
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


# -- the surface follows the credential, not the path ---------------------------------------------


def test_unimplemented_bedrock_operation_under_v1_is_unknown_operation(server: Server, locked_server: Server) -> None:
    """GetAccountDataRetentionStorage lives at /v1/data_retention/...: boto3 must see an AWS error."""
    for bedrock in (server.bedrock(), client(locked_server, "AKIDTUNEFORGE", KEYS["AKIDTUNEFORGE"])):
        with pytest.raises(ClientError) as exc:
            bedrock.get_account_data_retention_storage(modelProvider="anthropic")
        assert exc.value.response["Error"]["Code"] == "UnknownOperationException"
        assert exc.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"].startswith(
            "UnknownOperationException"
        )
    with pytest.raises(ClientError) as exc:  # a Bedrock request: SigV4 decides, not the bearer key
        client(locked_server, "AKIDTUNEFORGE", "wrong-secret").get_account_data_retention_storage(modelProvider="x")
    assert exc.value.response["Error"]["Code"] == "AccessDeniedException"


def test_signed_request_to_an_openai_route_is_an_unknown_bedrock_operation(server: Server) -> None:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="GET", url=f"{server.url}/v1/models")
    SigV4Auth(Credentials("AKIDTESTS", "test-secret"), "bedrock", "us-east-1").add_auth(request)
    response = httpx.get(request.url, headers=dict(request.headers))
    assert response.status_code == 404
    assert response.headers["x-amzn-ErrorType"].startswith("UnknownOperationException")
    assert response.json() == {"message": "Unknown operation"}


def test_openai_sdk_still_reaches_v1_beside_bedrock_v1_operations(server: Server) -> None:
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="placeholder", max_retries=0)
    assert any(model.id.startswith("tuneforge.") for model in sdk.models.list())


# -- presented credentials are verified wherever keys of their kind exist -------------------------


@pytest.fixture(scope="module")
def keyed_loopback_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Keys configured, anonymous access still allowed on loopback (the issue's reproduction)."""
    server = make_server(tmp_path_factory.mktemp("keyed"), access_keys=KEYS, api_keys=["sk-good-key"])
    assert server.settings.anonymous_allowed
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("key", "secret", "message"),
    [
        ("AKIDSTRANGER", "whatever", "unknown key AKIDSTRANGER"),
        ("AKIDTUNEFORGE", "wrong-secret", "signature we calculated does not match"),
    ],
)
def test_unknown_key_or_bad_signature_is_refused_on_anonymous_loopback_with_keys(
    keyed_loopback_server: Server, key: str, secret: str, message: str
) -> None:
    with pytest.raises(ClientError) as exc:
        client(keyed_loopback_server, key, secret).create_model_customization_job(
            jobName="loopback-intruder",
            customModelName="loopback-intruder",
            roleArn="arn:aws:iam::123456789012:role/x",
            baseModelIdentifier="tuneforge.forge-small-v1:0:512",
            trainingDataConfig={"s3Uri": "s3://x/train.jsonl"},
            outputDataConfig={"s3Uri": "s3://x/out/"},
        )
    assert exc.value.response["Error"]["Code"] == "AccessDeniedException"
    assert message in exc.value.response["Error"]["Message"]
    anonymous = client(keyed_loopback_server, "x", "x", signature_version=UNSIGNED)
    assert anonymous.list_model_customization_jobs(nameContains="intruder")["modelCustomizationJobSummaries"] == []


def test_wrong_bearer_key_is_refused_on_anonymous_loopback_with_api_keys(keyed_loopback_server: Server) -> None:
    wrong = openai.OpenAI(base_url=f"{keyed_loopback_server.url}/v1", api_key="sk-wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    right = openai.OpenAI(base_url=f"{keyed_loopback_server.url}/v1", api_key="sk-good-key", max_retries=0)
    assert list(right.models.list())
    assert httpx.get(f"{keyed_loopback_server.url}/v1/models").status_code == 200  # no credential: anonymous


def test_no_credential_is_anonymous_on_loopback_with_keys(keyed_loopback_server: Server) -> None:
    anonymous = client(keyed_loopback_server, "x", "x", signature_version=UNSIGNED)
    assert anonymous.list_foundation_models(byProvider="tuneforge")["modelSummaries"]


def test_placeholder_credentials_pass_on_anonymous_loopback_without_keys(server: Server) -> None:
    assert not server.settings.access_keys and not server.settings.api_keys
    assert client(server, "AKIDPLACEHOLDER", "anything").list_foundation_models()["modelSummaries"]
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-anything", max_retries=0)
    assert list(sdk.models.list())


# -- the signature covers the body received and this server's region ------------------------------


def signed_create_job(server: Server, body: bytes, region: str = "us-east-1") -> dict[str, str]:
    """Headers of a CreateModelCustomizationJob signed over ``body``, with its hash header as boto3 can send."""
    import hashlib

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(
        method="POST",
        url=f"{server.url}/model-customization-jobs",
        data=body,
        headers={"Content-Type": "application/json", "X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()},
    )
    SigV4Auth(Credentials("AKIDTUNEFORGE", KEYS["AKIDTUNEFORGE"]), "bedrock", region).add_auth(request)
    return dict(request.headers)


def job_body(name: str) -> bytes:
    return json.dumps(
        {
            "jobName": name,
            "customModelName": name,
            "roleArn": "arn:aws:iam::123456789012:role/x",
            "baseModelIdentifier": "tuneforge.forge-small-v1:0:512",
            "trainingDataConfig": {"s3Uri": "s3://x/train.jsonl"},
            "outputDataConfig": {"s3Uri": "s3://x/out/"},
        }
    ).encode()


def test_signed_body_replaced_in_transit_is_refused_and_creates_nothing(locked_server: Server) -> None:
    headers = signed_create_job(locked_server, job_body("signed-original"))
    response = httpx.post(
        f"{locked_server.url}/model-customization-jobs", content=job_body("swapped-body"), headers=headers, timeout=10
    )
    assert response.status_code == 403
    assert response.headers["x-amzn-ErrorType"].startswith("AccessDeniedException")
    assert response.json()["message"] == (
        "The provided 'x-amz-content-sha256' header does not match what was computed."
    )
    good = client(locked_server, "AKIDTUNEFORGE", KEYS["AKIDTUNEFORGE"])
    assert good.list_model_customization_jobs(nameContains="swapped")["modelCustomizationJobSummaries"] == []


def test_unsigned_payload_literal_is_refused(locked_server: Server) -> None:
    headers = signed_create_job(locked_server, job_body("unsigned-payload"))
    headers["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"
    response = httpx.post(
        f"{locked_server.url}/model-customization-jobs", content=job_body("unsigned-payload"), headers=headers
    )
    assert response.status_code == 403
    assert "x-amz-content-sha256" in response.json()["message"]


@pytest.mark.parametrize("region", ["eu-west-1", "nowhere"])
def test_signature_scoped_to_another_region_is_refused(locked_server: Server, region: str) -> None:
    bedrock = boto3.client(
        "bedrock",
        endpoint_url=locked_server.url,
        region_name=region,
        aws_access_key_id="AKIDTUNEFORGE",
        aws_secret_access_key=KEYS["AKIDTUNEFORGE"],
        config=Config(retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as exc:
        bedrock.list_foundation_models()
    assert exc.value.response["Error"]["Code"] == "AccessDeniedException"
    assert f"Credential should be scoped to a valid region, not '{region}'" in exc.value.response["Error"]["Message"]
