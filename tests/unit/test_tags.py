"""TagResource / UntagResource / ListTagsForResource rules (issue 9, item 8) and tag checks (item 17)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tuneforge.api.bedrock.schemas import parse_tag_resource, parse_untag_resource
from tuneforge.db.tables import ProvisionedModel
from tuneforge.errors import ResourceNotFoundException, TooManyTagsException, ValidationException
from tuneforge.jobs.invocations import CreateInvocationJobRequest
from tuneforge.jobs.service import CreateJobRequest
from tuneforge.services import Services
from tuneforge.serving.throughput import IDLE_TIMEOUT_TAG, CreateThroughputRequest
from tuneforge.settings import Settings

BASE = "tuneforge.forge-micro-v1:0:512"


@pytest.fixture
def services(fast_tmp: Path) -> Iterator[Services]:
    created = Services.create(Settings(data_dir=fast_tmp / "data", idle_timeout_minutes=60))
    yield created
    created.close()


def job_arn(services: Services) -> str:
    job = services.jobs.create(
        CreateJobRequest(
            job_name="tagged-job",
            custom_model_name="tagged-model",
            role_arn="arn:aws:iam::123456789012:role/BedrockRole",
            base_model_identifier=BASE,
            customization_type="FINE_TUNING",
            training_uri="s3://bucket/train.jsonl",
            output_uri="s3://bucket/out/",
            job_tags=({"key": "team", "value": "a"},),
        )
    )
    return job.arn


def throughput_arn(services: Services, *tags: dict[str, str]) -> str:
    return services.throughput.create(
        CreateThroughputRequest(name="tagged-pt", model_id=BASE, model_units=1, tags=tuple(tags))
    ).arn


def test_tags_given_at_create_are_listed_then_added_overwritten_and_removed(services: Services) -> None:
    arn = job_arn(services)
    assert services.tags.list_tags(arn) == [{"key": "team", "value": "a"}]
    services.tags.tag(arn, [{"key": "team", "value": "b"}, {"key": "cost-centre", "value": "42"}])
    assert services.tags.list_tags(arn) == [{"key": "team", "value": "b"}, {"key": "cost-centre", "value": "42"}]
    services.tags.untag(arn, ["team", "not-there"])
    assert services.tags.list_tags(arn) == [{"key": "cost-centre", "value": "42"}]


def test_provisioned_throughput_tags_are_listed_and_the_idle_tag_changes_its_timeout(services: Services) -> None:
    arn = throughput_arn(services, {"key": "env", "value": "dev"})
    assert services.tags.list_tags(arn) == [{"key": "env", "value": "dev"}]
    services.tags.tag(arn, [{"key": IDLE_TIMEOUT_TAG, "value": "5"}])
    assert services.throughput.get(arn).idle_timeout_s == 300
    services.tags.untag(arn, [IDLE_TIMEOUT_TAG])
    assert services.throughput.get(arn).idle_timeout_s == 3600


@pytest.mark.parametrize("value", ["1e300", "inf", "nan", "-1", "525601", "soon"])
def test_out_of_range_idle_tag_is_refused_naming_tag_and_range_and_stores_nothing(
    services: Services, value: str
) -> None:
    arn = throughput_arn(services)
    with pytest.raises(ValidationException, match=rf"{IDLE_TIMEOUT_TAG} must be a number of minutes between 0 and"):
        services.tags.tag(arn, [{"key": IDLE_TIMEOUT_TAG, "value": value}, {"key": "other", "value": "x"}])
    assert services.tags.list_tags(arn) == []
    assert services.throughput.get(arn).idle_timeout_s == 3600
    with pytest.raises(ValidationException, match="between 0 and 525600"):
        throughput_arn(services, {"key": IDLE_TIMEOUT_TAG, "value": value})


def test_custom_model_tags_are_readable(services: Services) -> None:
    from tests.unit.test_bedrock_paging import add_custom_model

    add_custom_model(services, "tagged-custom")
    arn = services.custom_models.get("tagged-custom").arn
    services.tags.tag(arn, [{"key": "k", "value": ""}])
    assert services.tags.list_tags(arn) == [{"key": "k", "value": ""}]


def test_batch_inference_job_tags_are_listed_then_changed(services: Services) -> None:
    job = services.invocation_jobs.create(
        CreateInvocationJobRequest(
            job_name="tagged-batch",
            role_arn="arn:aws:iam::123456789012:role/BedrockRole",
            model_id=BASE,
            input_uri="s3://bucket/in.jsonl",
            output_uri="s3://bucket/out/",
            tags=({"key": "team", "value": "a"},),
        )
    )
    assert services.tags.list_tags(job.arn) == [{"key": "team", "value": "a"}]
    services.tags.tag(job.arn, [{"key": "env", "value": "prod"}])
    services.tags.untag(job.arn, ["team"])
    assert services.tags.list_tags(job.arn) == [{"key": "env", "value": "prod"}]
    assert services.invocation_jobs.get(job.id).tags == [{"key": "env", "value": "prod"}]


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:bedrock:us-east-1:123456789012:model-customization-job/x.y/zzzzzzzzzzzz",
        "arn:aws:bedrock:us-east-1:123456789012:custom-model/imported/zzzzzzzzzzzz",
        "arn:aws:bedrock:us-east-1:123456789012:imported-model/zzzzzzzzzzzz",
        "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/zzzzzzzzzzzz",
        "arn:aws:bedrock:us-east-1:123456789012:guardrail/zzzzzzzzzzzz",
        "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/zzzzzzzzzzzz",
        "not-an-arn-at-all-but-long",
    ],
)
def test_unknown_or_unsupported_arn_is_resource_not_found(services: Services, arn: str) -> None:
    with pytest.raises(ResourceNotFoundException, match="does not exist"):
        services.tags.list_tags(arn)
    with pytest.raises(ResourceNotFoundException):
        services.tags.tag(arn, [{"key": "a", "value": "b"}])
    with pytest.raises(ResourceNotFoundException):
        services.tags.untag(arn, ["a"])


def test_deleted_provisioned_throughput_cannot_be_tagged(services: Services) -> None:
    arn = throughput_arn(services)
    services.throughput.delete(arn)
    with pytest.raises(ResourceNotFoundException):
        services.tags.tag(arn, [{"key": "a", "value": "b"}])


def test_more_than_200_tags_on_a_resource_is_too_many_tags(services: Services) -> None:
    arn = job_arn(services)
    services.tags.tag(arn, [{"key": f"k{i}", "value": "v"} for i in range(199)])
    assert len(services.tags.list_tags(arn)) == 200
    with pytest.raises(TooManyTagsException, match="at most 200"):
        services.tags.tag(arn, [{"key": "one-more", "value": "v"}])
    assert len(services.tags.list_tags(arn)) == 200


def test_committed_throughput_keeps_no_idle_timeout_when_tagged(services: Services) -> None:
    arn = throughput_arn(services)
    with services.db.session() as session:
        row = session.get(ProvisionedModel, services.throughput.get(arn).id)
        assert row is not None
        row.commitment_duration, row.idle_timeout_s = "OneMonth", None
    services.tags.tag(arn, [{"key": IDLE_TIMEOUT_TAG, "value": "5"}])
    assert services.throughput.get(arn).idle_timeout_s is None


# -- wire checks -------------------------------------------------------------------------------

ARN = "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abcdefghij12"


@pytest.mark.parametrize(
    ("tags", "fragment"),
    [
        ([{"key": "", "value": "v"}], "at 'tags.1.member.key' failed to satisfy constraint: Member must have length"),
        ([{"key": "k" * 129, "value": "v"}], "at 'tags.1.member.key'"),
        ([{"key": "k", "value": "v" * 257}], "at 'tags.1.member.value'"),
        ([{"key": "bad!", "value": "v"}], "at 'tags.1.member.key' failed to satisfy constraint: Member must satisfy"),
        ([{"key": "k", "value": "ok"}, {"key": "k2", "value": "<no>"}], "at 'tags.2.member.value'"),
        ([{"key": "k", "value": {"nested": 1}}], "at 'tags.1.member.value' failed to satisfy constraint: Member must"),
        ([{"key": 7, "value": "v"}], "at 'tags.1.member.key' failed to satisfy constraint: Member must be a string"),
        ([{"key": "k"}], "Member must have key and value"),
    ],
)
def test_bad_tags_are_validation_errors_naming_the_member(tags: list[Any], fragment: str) -> None:
    with pytest.raises(ValidationException) as info:
        parse_tag_resource({"resourceARN": ARN, "tags": tags})
    assert fragment in info.value.message


def test_more_than_200_tags_in_one_request_is_too_many_tags() -> None:
    with pytest.raises(TooManyTagsException):
        parse_tag_resource({"resourceARN": ARN, "tags": [{"key": f"k{i}", "value": "v"} for i in range(201)]})


def test_untag_checks_each_key_and_requires_the_list() -> None:
    assert parse_untag_resource({"resourceARN": ARN, "tagKeys": ["a", "b"]}) == (ARN, ("a", "b"))
    with pytest.raises(ValidationException, match=r"'tagKeys.2.member' failed to satisfy constraint"):
        parse_untag_resource({"resourceARN": ARN, "tagKeys": ["a", "b!"]})
    with pytest.raises(ValidationException, match="Value null at 'tagKeys'"):
        parse_untag_resource({"resourceARN": ARN})
