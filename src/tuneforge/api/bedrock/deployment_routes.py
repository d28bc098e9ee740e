"""Bedrock control plane for custom model deployments (on-demand custom models). HTTP only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from tuneforge.api.bedrock import deployment_schemas, schemas
from tuneforge.api.bedrock.shapes import parse_body
from tuneforge.api.deps import get_services
from tuneforge.services import Services
from tuneforge.serving.deployments import DeploymentFilter

router = APIRouter()
ServicesDep = Annotated[Services, Depends(get_services)]
PREFIX = "/model-customization/custom-model-deployments"


@router.post(PREFIX, status_code=202)
async def create_custom_model_deployment(request: Request, services: ServicesDep) -> JSONResponse:
    parsed = deployment_schemas.parse_create_deployment(parse_body(await request.body(), "CreateCustomModelDeployment"))
    row = services.deployments.create(parsed)
    return JSONResponse({"customModelDeploymentArn": row.arn}, status_code=202)


@router.get(PREFIX)
def list_custom_model_deployments(
    services: ServicesDep,
    created_before: Annotated[str | None, Query(alias="createdBefore")] = None,
    created_after: Annotated[str | None, Query(alias="createdAfter")] = None,
    name_contains: Annotated[str | None, Query(alias="nameContains")] = None,
    max_results: Annotated[str | None, Query(alias="maxResults")] = None,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
    sort_by: Annotated[str | None, Query(alias="sortBy")] = None,
    sort_order: Annotated[str | None, Query(alias="sortOrder")] = None,
    status_equals: Annotated[str | None, Query(alias="statusEquals")] = None,
    model_arn_equals: Annotated[str | None, Query(alias="modelArnEquals")] = None,
) -> dict[str, Any]:
    limit, descending = schemas.parse_paging(max_results, sort_by, sort_order)
    deployment_schemas.check_list_filters(status_equals, name_contains, model_arn_equals)
    filters = DeploymentFilter(
        created_after=schemas.parse_time(created_after, "createdAfter"),
        created_before=schemas.parse_time(created_before, "createdBefore"),
        name_contains=name_contains,
        status_equals=status_equals,
        model_arn_equals=model_arn_equals,
        sort_descending=descending,
    )
    return schemas.list_page(
        services.page_tokens,
        "ListCustomModelDeployments",
        filters,
        next_token,
        lambda after: services.deployments.list_deployments(filters, after, limit),
        "modelDeploymentSummaries",
        lambda items: [deployment_schemas.deployment_summary(r) for r in items],
    )


@router.get(PREFIX + "/{identifier:path}")
def get_custom_model_deployment(identifier: str, services: ServicesDep) -> dict[str, Any]:
    row = services.deployments.get(identifier)
    services.meter.flush()
    return deployment_schemas.deployment_details(row, services.deployments.extension(row))


@router.patch(PREFIX + "/{identifier:path}", status_code=202)
async def update_custom_model_deployment(identifier: str, request: Request, services: ServicesDep) -> JSONResponse:
    model_arn = deployment_schemas.parse_update_deployment(
        parse_body(await request.body(), "UpdateCustomModelDeployment")
    )
    row = services.deployments.update(identifier, model_arn)
    return JSONResponse({"customModelDeploymentArn": row.arn}, status_code=202)


@router.delete(PREFIX + "/{identifier:path}")
def delete_custom_model_deployment(identifier: str, services: ServicesDep) -> dict[str, Any]:
    services.deployments.delete(identifier)
    return {}
