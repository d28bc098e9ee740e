from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from tuneforge.api.bedrock.schemas import (
    JOB_NAME_PATTERN,
    iso,
    parse_create_job,
    parse_paging,
    parse_time,
    status_details,
)
from tuneforge.errors import (
    AccessDeniedException,
    ConflictException,
    InternalServerException,
    ResourceInUseException,
    ResourceNotFoundException,
    ServiceError,
    ServiceQuotaExceededException,
    ServiceUnavailableException,
    ThrottlingException,
    TooManyTagsException,
    ValidationException,
    constraint_errors,
)

BASE_MODEL = "tuneforge.forge-micro-v1:0:512"


def body(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "jobName": "job-1",
        "customModelName": "model-1",
        "roleArn": "arn:aws:iam::123456789012:role/BedrockRole",
        "baseModelIdentifier": BASE_MODEL,
        "trainingDataConfig": {"s3Uri": "s3://bucket/train.jsonl"},
        "outputDataConfig": {"s3Uri": "s3://bucket/out/"},
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def message_of(data: dict[str, Any]) -> str:
    with pytest.raises(ValidationException) as info:
        parse_create_job(data)
    return info.value.message


# -- parse_create_job ----------------------------------------------------------------------------


def test_parse_create_job_minimal_body_fills_defaults() -> None:
    request = parse_create_job(body())
    assert request.job_name == "job-1"
    assert request.custom_model_name == "model-1"
    assert request.base_model_identifier == BASE_MODEL
    assert request.customization_type == "FINE_TUNING"
    assert request.training_uri == "s3://bucket/train.jsonl"
    assert request.output_uri == "s3://bucket/out/"
    assert request.validation_uris == ()
    assert request.hyperparameters == {}
    assert request.client_request_token is None
    assert request.job_tags == ()


def test_parse_create_job_carries_optional_members() -> None:
    request = parse_create_job(
        body(
            clientRequestToken="abc-123",
            hyperParameters={"epochCount": "2"},
            validationDataConfig={"validators": [{"s3Uri": "s3://bucket/v1.jsonl"}, {"s3Uri": "s3://bucket/v2"}]},
            jobTags=[{"key": "team", "value": "ml"}],
            customizationType="CONTINUED_PRE_TRAINING",
        )
    )
    assert request.client_request_token == "abc-123"
    assert request.hyperparameters == {"epochCount": "2"}
    assert request.validation_uris == ("s3://bucket/v1.jsonl", "s3://bucket/v2")
    assert request.job_tags == ({"key": "team", "value": "ml"},)
    assert request.customization_type == "CONTINUED_PRE_TRAINING"


def test_bad_job_name_gives_aws_single_error_message() -> None:
    assert message_of(body(jobName="bad_name!")) == (
        "1 validation error detected: Value 'bad_name!' at 'jobName' failed to satisfy constraint: "
        f"Member must satisfy regular expression pattern: {JOB_NAME_PATTERN}"
    )


def test_two_bad_members_give_aws_aggregate_message_joined_by_semicolon() -> None:
    message = message_of(body(jobName="bad_name!", customModelName="bad model"))
    assert message.startswith("2 validation errors detected: ")
    first, second = message.removeprefix("2 validation errors detected: ").split("; ")
    assert first.startswith("Value 'bad_name!' at 'jobName' failed to satisfy constraint")
    assert second.startswith("Value 'bad model' at 'customModelName' failed to satisfy constraint")


def test_missing_job_name_is_reported_as_null() -> None:
    assert message_of(body(jobName=None)) == (
        "1 validation error detected: Value null at 'jobName' failed to satisfy constraint: Member must not be null"
    )


def test_empty_body_reports_every_required_member() -> None:
    message = message_of({})
    assert message.startswith("6 validation errors detected: ")
    for member in (
        "jobName",
        "customModelName",
        "roleArn",
        "baseModelIdentifier",
        "trainingDataConfig",
        "outputDataConfig",
    ):
        assert f"Value null at '{member}' failed to satisfy constraint: Member must not be null" in message


def test_missing_training_s3_uri_is_reported_as_null() -> None:
    assert "Value null at 'trainingDataConfig.s3Uri'" in message_of(body(trainingDataConfig={}))


def test_job_name_longer_than_63_is_refused_with_length_constraint() -> None:
    message = message_of(body(jobName="a" * 64))
    assert "Member must have length less than or equal to 63" in message


def test_non_string_job_name_is_refused() -> None:
    assert "Value '5' at 'jobName' failed to satisfy constraint: Member must be a string" in message_of(body(jobName=5))


def test_role_arn_must_match_iam_role_pattern() -> None:
    assert "at 'roleArn' failed to satisfy constraint: Member must satisfy regular expression" in message_of(
        body(roleArn="arn:aws:s3:::bucket")
    )


def test_ten_validators_accepted_eleven_refused() -> None:
    ten = {"validators": [{"s3Uri": f"s3://bucket/v{i}"} for i in range(10)]}
    assert len(parse_create_job(body(validationDataConfig=ten)).validation_uris) == 10
    eleven = {"validators": [{"s3Uri": f"s3://bucket/v{i}"} for i in range(11)]}
    assert "Member must have length less than or equal to 10" in message_of(body(validationDataConfig=eleven))


@pytest.mark.parametrize("hyper", [{"epochCount": 2}, {"epochCount": None}, {"epochCount": ["2"]}, "epochCount=2"])
def test_non_string_hyperparameter_values_are_refused(hyper: object) -> None:
    assert "at 'hyperParameters' failed to satisfy constraint: Member must be a map of string to string" in (
        message_of(body(hyperParameters=hyper))
    )


def test_customization_type_outside_enum_is_refused_listing_values() -> None:
    message = message_of(body(customizationType="LORA"))
    assert message.startswith("1 validation error detected: Value 'LORA' at 'customizationType'")
    assert (
        "Member must satisfy enum value set: [FINE_TUNING, CONTINUED_PRE_TRAINING, DISTILLATION, "
        "REINFORCEMENT_FINE_TUNING, IMPORTED]" in message
    )


def test_valid_but_unsupported_customization_type_is_refused_clearly() -> None:
    assert message_of(body(customizationType="IMPORTED")) == "Customization type IMPORTED is not supported by tuneforge"


def test_invocation_logs_training_source_is_refused_outside_distillation() -> None:
    config = {"invocationLogsConfig": {"invocationLogSource": {"s3Uri": "s3://bucket/logs/"}}}
    assert "supported only for customizationType DISTILLATION" in message_of(body(trainingDataConfig=config))


def test_invocation_logs_source_is_parsed_for_distillation() -> None:
    logs = {
        "invocationLogSource": {"s3Uri": "s3://bucket/logs/"},
        "usePromptResponse": True,
        "requestMetadataFilters": {"andAll": [{"equals": {"team": "a"}}, {"notEquals": {"env": "dev"}}]},
    }
    request = parse_create_job(
        body(customizationType="DISTILLATION", trainingDataConfig={"invocationLogsConfig": logs})
    )
    assert request.training_uri == "s3://bucket/logs/"
    assert request.invocation_logs == logs


@pytest.mark.parametrize(
    ("filters", "fragment"),
    [
        ({"equals": {"a": "1", "b": "2"}}, "Member must have exactly one entry"),
        ({"equals": {"a": "1"}, "notEquals": {"b": "2"}}, "Member must set exactly one operator"),
        ({"andAll": []}, "Member must have length between 1 and 16"),
        ({"andAll": [{"orAll": [{"equals": {"a": "1"}}]}]}, "Member must satisfy enum value set"),
        ({"startsWith": {"a": "1"}}, "Member must satisfy enum value set"),
    ],
)
def test_invalid_request_metadata_filters_are_refused(filters: dict[str, object], fragment: str) -> None:
    logs = {"invocationLogSource": {"s3Uri": "s3://bucket/logs/"}, "requestMetadataFilters": filters}
    message = message_of(body(customizationType="DISTILLATION", trainingDataConfig={"invocationLogsConfig": logs}))
    assert fragment in message


def test_distillation_config_is_carried_as_sent() -> None:
    config = {
        "distillationConfig": {
            "teacherModelConfig": {
                "teacherModelIdentifier": "tuneforge.forge-small-v1:0:512",
                "maxResponseLengthForInference": 64,
            }
        }
    }
    request = parse_create_job(body(customizationType="DISTILLATION", customizationConfig=config))
    assert (request.customization_type, request.customization_config) == ("DISTILLATION", config)


EXACT_MATCH = {"lambdaGrader": {"lambdaArn": "arn:aws:lambda:us-east-1:123456789012:function:tuneforge-exact-match"}}


def test_rft_config_is_carried_as_sent() -> None:
    config = {"rftConfig": {"graderConfig": EXACT_MATCH, "hyperParameters": {"batchSize": 16, "learningRate": 1e-4}}}
    request = parse_create_job(body(customizationType="REINFORCEMENT_FINE_TUNING", customizationConfig=config))
    assert (request.customization_type, request.customization_config) == ("REINFORCEMENT_FINE_TUNING", config)


@pytest.mark.parametrize(
    ("hyper", "fragment"),
    [
        ({"trainingSamplePerPrompt": 1}, "at 'customizationConfig.rftConfig.hyperParameters.trainingSamplePerPrompt'"),
        ({"batchSize": 8}, "Member must have value greater than or equal to 16"),
        ({"evalInterval": 101}, "Member must have value less than or equal to 100"),
        ({"learningRate": 0.01}, "Member must have value between 1.0E-7 and 0.001"),
        ({"reasoningEffort": "max"}, "Member must satisfy enum value set: [low, medium, high]"),
        ({"temperature": 1}, "Unknown member temperature"),
    ],
)
def test_rft_hyperparameters_outside_botocore_ranges_are_refused(hyper: dict[str, Any], fragment: str) -> None:
    config = {"rftConfig": {"graderConfig": EXACT_MATCH, "hyperParameters": hyper}}
    assert fragment in message_of(body(customizationType="REINFORCEMENT_FINE_TUNING", customizationConfig=config))


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ("teacher", "at 'customizationConfig' failed to satisfy constraint: Member must be a structure"),
        ({}, "Member must set exactly one of [distillationConfig, rftConfig]"),
        ({"distillationConfig": {}, "rftConfig": {}}, "Member must set exactly one of [distillationConfig, rftConfig]"),
        ({"distillationConfig": {}}, "Value null at 'customizationConfig.distillationConfig.teacherModelConfig'"),
        (
            {"distillationConfig": {"teacherModelConfig": {}}},
            "Value null at 'customizationConfig.distillationConfig.teacherModelConfig.teacherModelIdentifier'",
        ),
        (
            {
                "distillationConfig": {
                    "teacherModelConfig": {"teacherModelIdentifier": "t", "maxResponseLengthForInference": 0}
                }
            },
            "at 'customizationConfig.distillationConfig.teacherModelConfig.maxResponseLengthForInference'",
        ),
    ],
)
def test_malformed_customization_config_is_refused_naming_the_member(config: object, fragment: str) -> None:
    assert fragment in message_of(body(customizationType="DISTILLATION", customizationConfig=config))


def test_tag_without_value_is_refused() -> None:
    assert "at 'jobTags' failed to satisfy constraint: Member must have key and value" in message_of(
        body(jobTags=[{"key": "k"}])
    )


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ValidationException, 400),
        (ConflictException, 400),
        (ResourceInUseException, 400),
        (ServiceQuotaExceededException, 400),
        (TooManyTagsException, 400),
        (AccessDeniedException, 403),
        (ResourceNotFoundException, 404),
        (ThrottlingException, 429),
        (InternalServerException, 500),
        (ServiceUnavailableException, 503),
    ],
)
def test_service_errors_carry_bedrock_code_and_status(error: type[ServiceError], status: int) -> None:
    exc = error("boom")
    assert (exc.code, exc.status, exc.message, str(exc)) == (error.__name__, status, "boom", "boom")


def test_constraint_errors_counts_violations() -> None:
    assert constraint_errors(["a"]).message == "1 validation error detected: a"
    assert constraint_errors(["a", "b", "c"]).message == "3 validation errors detected: a; b; c"


# -- paging --------------------------------------------------------------------------------------


def test_parse_paging_defaults_to_first_100_descending() -> None:
    assert parse_paging(None, None, None) == (100, True)


def test_parse_paging_reads_limit_and_ascending_order() -> None:
    assert parse_paging("25", "CreationTime", "Ascending") == (25, False)


@pytest.mark.parametrize("bound", ["1", "1000"])
def test_parse_paging_accepts_max_results_bounds(bound: str) -> None:
    assert parse_paging(bound, None, None)[0] == int(bound)


@pytest.mark.parametrize(
    ("max_results", "constraint"),
    [
        ("0", "Member must have value greater than or equal to 1"),
        ("-5", "Member must have value greater than or equal to 1"),
        ("1001", "Member must have value less than or equal to 1000"),
        ("ten", "Member must be an integer"),
    ],
)
def test_parse_paging_refuses_max_results_out_of_bounds(max_results: str, constraint: str) -> None:
    with pytest.raises(ValidationException) as info:
        parse_paging(max_results, None, None)
    assert info.value.message == (
        f"1 validation error detected: Value '{max_results}' at 'maxResults' failed to satisfy constraint: {constraint}"
    )


def test_parse_paging_refuses_sort_order_outside_enum() -> None:
    with pytest.raises(ValidationException, match=r"'sortOrder'.*enum value set: \[Ascending, Descending\]"):
        parse_paging(None, None, "Sideways")


def test_parse_paging_refuses_sort_by_outside_enum() -> None:
    with pytest.raises(ValidationException, match=r"'sortBy'.*enum value set: \[CreationTime\]"):
        parse_paging(None, "Name", None)


# -- timestamps --------------------------------------------------------------------------------


def test_iso_renders_utc_with_milliseconds_and_trailing_z() -> None:
    assert iso(datetime(2024, 1, 2, 3, 4, 5, 678_999, tzinfo=UTC)) == "2024-01-02T03:04:05.678Z"


def test_iso_renders_whole_seconds_with_zero_milliseconds() -> None:
    assert iso(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2024-01-02T03:04:05.000Z"


def test_iso_renders_other_offsets_and_naive_times_as_utc() -> None:
    assert iso(datetime(2024, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))) == "2024-01-02T03:04:05.000Z"
    assert iso(datetime(2024, 1, 2, 3, 4, 5)) == "2024-01-02T03:04:05.000Z"


def test_status_details_times_are_rendered_like_top_level_times() -> None:
    stored = {"validationDetails": {"status": "Completed", "creationTime": "2024-01-02T03:04:05.678901+00:00"}}
    assert status_details(stored) == {
        "validationDetails": {"status": "Completed", "creationTime": "2024-01-02T03:04:05.678Z"}
    }
    assert status_details({}) is None


def test_iso_of_none_is_none() -> None:
    assert iso(None) is None


def test_parse_time_reads_z_suffix_as_utc() -> None:
    assert parse_time("2024-01-02T03:04:05Z", "creationTimeAfter") == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_parse_time_keeps_explicit_offset() -> None:
    parsed = parse_time("2024-01-02T05:04:05+02:00", "creationTimeAfter")
    assert parsed == datetime(2024, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))


def test_parse_time_refuses_garbage_naming_member() -> None:
    with pytest.raises(ValidationException, match=r"Value 'yesterday' at 'creationTimeBefore'.*ISO-8601"):
        parse_time("yesterday", "creationTimeBefore")


@pytest.mark.parametrize(
    ("key", "echoed"),
    [
        ("arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab", True),
        ("1234abcd-12ab-34cd-56ef-1234567890ab", False),
        ("alias/my-key", False),
    ],
)
def test_job_and_custom_model_responses_echo_only_a_kms_key_arn(key: str, echoed: bool) -> None:
    """``customModelKmsKeyId`` takes a key id or alias too; the responses' ``KmsKeyArn`` members only an
    ARN, which tuneforge cannot resolve an id or alias to without KMS, so those are omitted."""
    from tuneforge.api.bedrock import schemas
    from tuneforge.db.tables import CustomModel, Job

    job = Job(kms_key=key, output_data={"s3Uri": "s3://b/out/"}, training_data={"s3Uri": "s3://b/t.jsonl"})
    model = CustomModel(kms_key=key, training_data={"s3Uri": "s3://b/t.jsonl"}, output_data={"s3Uri": "s3://b/o/"})
    expected = key if echoed else None
    assert schemas.job_details(job).get("outputModelKmsKeyArn") == expected
    assert schemas.custom_model_details(model).get("modelKmsKeyArn") == expected
