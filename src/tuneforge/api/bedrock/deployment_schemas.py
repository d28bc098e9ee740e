"""Bedrock wire shapes for custom model deployments (camelCase in and out).

Get adds a ``tuneforge`` object (a tuneforge extension that botocore's parser drops, as for
provisioned throughput): how the deployment is served (``adapter`` on its base's engine, or ``full``),
its engine group, the monthly budget and what this month's tokens cost so far.
"""

from __future__ import annotations

from typing import Any

from tuneforge.api.bedrock.schemas import TOKEN_PATTERN, Checker, _compact, _tags, iso
from tuneforge.api.bedrock.serving_schemas import PROVISIONED_NAME_PATTERN
from tuneforge.db.tables import CustomModelDeployment
from tuneforge.errors import TooManyTagsException
from tuneforge.serving.deployments import STATUSES, CreateDeploymentRequest

DEPLOYMENT_NAME_PATTERN = PROVISIONED_NAME_PATTERN
"""botocore's ``ModelDeploymentName`` (``([0-9a-zA-Z][_-]?){1,63}``; the length is checked apart)."""


def parse_create_deployment(body: dict[str, Any]) -> CreateDeploymentRequest:
    c = Checker()
    name = c.string(body, "modelDeploymentName", required=True, max_len=63, pattern=DEPLOYMENT_NAME_PATTERN)
    model_arn = c.string(body, "modelArn", required=True, min_len=20, max_len=1011)
    description = c.string(body, "description", max_len=2048)
    token = c.string(body, "clientRequestToken", max_len=256, pattern=TOKEN_PATTERN)
    if isinstance(body.get("tags"), list) and len(body["tags"]) > 200:
        raise TooManyTagsException("A resource can have at most 200 tags")
    tags = _tags(c, body, "tags")
    c.raise_if_any()
    assert name and model_arn
    return CreateDeploymentRequest(
        name=name, model_arn=model_arn, description=description, tags=tags, client_request_token=token
    )


def parse_update_deployment(body: dict[str, Any]) -> str:
    c = Checker()
    model_arn = c.string(body, "modelArn", required=True, min_len=20, max_len=1011)
    c.raise_if_any()
    assert model_arn
    return model_arn


def check_list_filters(status_equals: str | None, name_contains: str | None, model_arn_equals: str | None) -> None:
    c = Checker()
    c.string({"statusEquals": status_equals}, "statusEquals", enum=STATUSES)
    c.string({"nameContains": name_contains}, "nameContains", max_len=63, pattern=DEPLOYMENT_NAME_PATTERN)
    c.string({"modelArnEquals": model_arn_equals}, "modelArnEquals", min_len=20, max_len=1011)
    c.raise_if_any()


def deployment_summary(row: CustomModelDeployment) -> dict[str, Any]:
    return _compact(
        {
            "customModelDeploymentArn": row.arn,
            "customModelDeploymentName": row.name,
            "modelArn": row.model_arn,
            "createdAt": iso(row.created_at),
            "status": row.status,
            "lastUpdatedAt": iso(row.updated_at),
            "failureMessage": row.failure_message,
        }
    )


def deployment_details(row: CustomModelDeployment, extension: dict[str, Any]) -> dict[str, Any]:
    update = (
        {"modelArn": row.update_model_arn, "updateStatus": row.update_status}
        if row.update_model_arn and row.update_status
        else None
    )
    return {
        **_compact(
            {
                "customModelDeploymentArn": row.arn,
                "modelDeploymentName": row.name,
                "modelArn": row.model_arn,
                "createdAt": iso(row.created_at),
                "status": row.status,
                "description": row.description,
                "updateDetails": update,
                "failureMessage": row.failure_message,
                "lastUpdatedAt": iso(row.updated_at),
            }
        ),
        "tuneforge": _compact(extension),
    }
