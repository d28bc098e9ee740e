"""Hostile and careless input to the Bedrock control plane of a real server (issue 9, items 5, 8, 12,
16, 22, 23), through boto3 where botocore lets a request through, raw HTTP where it would not."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from tests.e2e.conftest import BASE_MODEL, ROLE, Server, unique

pytestmark = pytest.mark.e2e

SAFETY_NET_S = 10.0
"""Generous: the fixed server answers in milliseconds; the old one took hours on these strings."""
WIRE_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def job_request(name: str, **overrides: Any) -> dict[str, Any]:
    return {
        "jobName": name,
        "customModelName": f"m-{name}",
        "roleArn": ROLE,
        "baseModelIdentifier": BASE_MODEL,
        "customizationType": "FINE_TUNING",
        # No such file: the job fails in validation, quickly, which is all these tests need.
        "trainingDataConfig": {"s3Uri": "s3://tests/hardening/missing.jsonl"},
        "outputDataConfig": {"s3Uri": f"s3://tests/out/{name}/"},
        **overrides,
    }


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    error = exc.value.response["Error"]
    return str(error["Code"]), str(error["Message"])


def aws_error(response: httpx.Response) -> tuple[int, str, str]:
    return response.status_code, response.headers["x-amzn-ErrorType"].split(":")[0], response.json()["message"]


# -- item 5: pagination ----------------------------------------------------------------------------


def test_list_jobs_pages_repeat_nothing_when_jobs_are_created_between_pages(bedrock: Any) -> None:
    prefix = unique("keyset")
    for i in range(3):
        bedrock.create_model_customization_job(**job_request(f"{prefix}-{i}"))
    first = bedrock.list_model_customization_jobs(nameContains=prefix, maxResults=2, sortOrder="Descending")
    seen = [s["jobName"] for s in first["modelCustomizationJobSummaries"]]
    assert seen == [f"{prefix}-2", f"{prefix}-1"]
    bedrock.create_model_customization_job(**job_request(f"{prefix}-3"))  # lands before page 1
    second = bedrock.list_model_customization_jobs(
        nameContains=prefix, maxResults=2, sortOrder="Descending", nextToken=first["nextToken"]
    )
    seen += [s["jobName"] for s in second["modelCustomizationJobSummaries"]]
    assert seen == [f"{prefix}-2", f"{prefix}-1", f"{prefix}-0"]
    assert "nextToken" not in second


def test_tampered_or_foreign_next_token_is_invalid_pagination_token(bedrock: Any) -> None:
    prefix = unique("token")
    for i in range(2):
        bedrock.create_model_customization_job(**job_request(f"{prefix}-{i}"))
    token = bedrock.list_model_customization_jobs(nameContains=prefix, maxResults=1)["nextToken"]
    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    offset_token = "eyJvZmZzZXQiOiAyfQ=="  # base64 of {"offset": 2}, the old format
    for bad, filters in [(tampered, {}), (offset_token, {}), (token, {"statusEquals": "Failed"})]:
        with pytest.raises(ClientError) as exc:
            bedrock.list_model_customization_jobs(nameContains=prefix, maxResults=1, nextToken=bad, **filters)
        assert error_of(exc) == ("ValidationException", "Invalid pagination token")
    with pytest.raises(ClientError) as exc:
        bedrock.list_custom_models(nextToken=token)
    assert error_of(exc) == ("ValidationException", "Invalid pagination token")


# -- item 8: tags and timestamps --------------------------------------------------------------------


def test_tag_operations_read_add_and_remove_tags_of_a_job(bedrock: Any) -> None:
    name = unique("tagged")
    arn = bedrock.create_model_customization_job(**job_request(name, jobTags=[{"key": "team", "value": "a"}]))["jobArn"]
    assert bedrock.list_tags_for_resource(resourceARN=arn)["tags"] == [{"key": "team", "value": "a"}]
    bedrock.tag_resource(resourceARN=arn, tags=[{"key": "team", "value": "b"}, {"key": "env", "value": "dev"}])
    assert bedrock.list_tags_for_resource(resourceARN=arn)["tags"] == [
        {"key": "team", "value": "b"},
        {"key": "env", "value": "dev"},
    ]
    bedrock.untag_resource(resourceARN=arn, tagKeys=["team"])
    assert bedrock.list_tags_for_resource(resourceARN=arn)["tags"] == [{"key": "env", "value": "dev"}]

    with pytest.raises(ClientError) as exc:
        bedrock.tag_resource(resourceARN=arn, tags=[{"key": "bad!key", "value": "v"}])
    assert error_of(exc)[0] == "ValidationException" and "tags.1.member.key" in error_of(exc)[1]
    with pytest.raises(ClientError) as exc:
        bedrock.tag_resource(resourceARN=arn, tags=[{"key": f"k{i}", "value": "v"} for i in range(200)])
    assert error_of(exc)[0] == "TooManyTagsException"
    assert len(bedrock.list_tags_for_resource(resourceARN=arn)["tags"]) == 1


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:bedrock:us-east-1:123456789012:model-customization-job/x.y/zzzzzzzzzzzz",
        "arn:aws:bedrock:us-east-1:123456789012:imported-model/zzzzzzzzzzzz",
        "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/zzzzzzzzzzzz",
    ],
)
def test_tag_operations_on_unknown_arns_are_resource_not_found(bedrock: Any, arn: str) -> None:
    for call in (
        lambda: bedrock.list_tags_for_resource(resourceARN=arn),
        lambda: bedrock.tag_resource(resourceARN=arn, tags=[{"key": "a", "value": "b"}]),
        lambda: bedrock.untag_resource(resourceARN=arn, tagKeys=["a"]),
    ):
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc)[0] == "ResourceNotFoundException"


def test_every_timestamp_on_the_wire_has_one_format(server: Server, bedrock: Any) -> None:
    arn = bedrock.create_model_customization_job(**job_request(unique("times")))["jobArn"]
    body = httpx.get(f"{server.url}/model-customization-jobs/{arn.rsplit('/', 1)[-1]}", timeout=30).json()
    times = [body["creationTime"], body["lastModifiedTime"]]
    for stage in body["statusDetails"].values():
        times += [stage["creationTime"], stage["lastModifiedTime"]]
    assert all(WIRE_TIME.fullmatch(t) for t in times), times
    summary = bedrock.get_model_customization_job(jobIdentifier=arn)["statusDetails"]["validationDetails"]
    assert summary["creationTime"].tzinfo is not None  # botocore parses it as an aware datetime


# -- item 12: ReDoS ------------------------------------------------------------------------------


def test_redos_job_name_and_name_contains_are_answered_while_healthz_answers(server: Server) -> None:
    hostile = "a" + "-" * 60 + "!"
    results: dict[str, int] = {}

    def hostile_calls() -> None:
        with httpx.Client(base_url=server.url, timeout=SAFETY_NET_S) as client:
            results["create"] = client.post(
                "/model-customization-jobs", json=job_request(hostile), headers={"content-type": "application/json"}
            ).status_code
            results["list"] = client.get("/model-customization-jobs", params={"nameContains": hostile}).status_code

    thread = threading.Thread(target=hostile_calls)
    thread.start()
    health = httpx.get(f"{server.url}/healthz", timeout=SAFETY_NET_S)
    thread.join(SAFETY_NET_S * 2)
    assert health.status_code == 200
    assert results == {"create": 400, "list": 400}


# -- items 22, 23: bodies ------------------------------------------------------------------------


def test_lone_surrogate_in_job_name_is_a_validation_exception_and_the_connection_lives_on(server: Server) -> None:
    raw = json.dumps(job_request(unique("surrogate"))).replace('"jobName": "', '"jobName": "\\ud800').encode()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post("/model-customization-jobs", content=raw, headers={"content-type": "application/json"})
        status, code, message = aws_error(response)
        assert (status, code) == (400, "ValidationException")
        assert "'jobName'" in message and "lone surrogate" in message
        assert client.get("/foundation-models").status_code == 200


@pytest.mark.parametrize(
    ("extra", "member"),
    [
        ({"surprise": True}, "surprise"),
        ({"jobTags": [{"key": "k", "value": {"nested": 1}}]}, "jobTags.1.member.value"),
        ({"hyperParameters": {"epochCount": 1}}, "hyperParameters.epochCount"),
    ],
)
def test_unknown_members_and_wrong_types_are_refused_naming_them(
    server: Server, extra: dict[str, Any], member: str
) -> None:
    response = httpx.post(
        f"{server.url}/model-customization-jobs", json={**job_request(unique("lenient")), **extra}, timeout=30
    )
    status, code, message = aws_error(response)
    assert (status, code) == (400, "ValidationException")
    assert f"'{member}'" in message


def test_s3_key_with_a_segment_over_255_bytes_is_refused_at_create(bedrock: Any) -> None:
    request = job_request(unique("longkey"), trainingDataConfig={"s3Uri": "s3://tests/" + "k" * 300 + ".jsonl"})
    with pytest.raises(ClientError) as exc:
        bedrock.create_model_customization_job(**request)
    code, message = error_of(exc)
    assert code == "ValidationException" and "'trainingDataConfig.s3Uri'" in message and "255 bytes" in message


# -- item 16: invocation logging -----------------------------------------------------------------


def test_logging_key_prefix_that_escapes_is_refused_naming_it(bedrock: Any) -> None:
    before = bedrock.get_model_invocation_logging_configuration().get("loggingConfig")
    with pytest.raises(ClientError) as exc:
        bedrock.put_model_invocation_logging_configuration(
            loggingConfig={
                "s3Config": {"bucketName": "logs", "keyPrefix": "../../escape"},
                "textDataDeliveryEnabled": True,
            }
        )
    code, message = error_of(exc)
    assert code == "ValidationException" and "loggingConfig.s3Config.keyPrefix" in message
    assert bedrock.get_model_invocation_logging_configuration().get("loggingConfig") == before
