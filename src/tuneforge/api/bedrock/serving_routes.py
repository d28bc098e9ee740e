"""Bedrock control plane for serving: provisioned throughput and invocation logging. HTTP only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from tuneforge.api.bedrock import schemas, serving_schemas
from tuneforge.api.bedrock.shapes import parse_body
from tuneforge.api.deps import get_manager, get_services
from tuneforge.db.tables import ProvisionedModel
from tuneforge.services import Services
from tuneforge.serving.manager import EngineManager, pt_group
from tuneforge.serving.throughput import ThroughputFilter
from tuneforge.serving.usage import meters, usage_report

router = APIRouter()
ServicesDep = Annotated[Services, Depends(get_services)]
ManagerDep = Annotated[EngineManager, Depends(get_manager)]


def _with_meters(
    services: Services, manager: EngineManager, rows: list[ProvisionedModel], *, details: bool
) -> list[dict[str, Any]]:
    services.meter.flush()
    with services.db.session() as session:
        found = meters(session, [row.id for row in rows])
    shape = serving_schemas.throughput_details if details else serving_schemas.throughput_summary
    return [shape(row, found[row.id], manager.replica_states(pt_group(row.id))) for row in rows]


@router.post("/provisioned-model-throughput", status_code=201)
async def create_provisioned_model_throughput(request: Request, services: ServicesDep) -> JSONResponse:
    parsed = serving_schemas.parse_create_throughput(
        parse_body(await request.body(), "CreateProvisionedModelThroughput")
    )
    row = services.throughput.create(parsed)
    return JSONResponse({"provisionedModelArn": row.arn}, status_code=201)


@router.get("/provisioned-model-throughputs")
def list_provisioned_model_throughputs(
    services: ServicesDep,
    manager: ManagerDep,
    creation_time_after: Annotated[str | None, Query(alias="creationTimeAfter")] = None,
    creation_time_before: Annotated[str | None, Query(alias="creationTimeBefore")] = None,
    status_equals: Annotated[str | None, Query(alias="statusEquals")] = None,
    model_arn_equals: Annotated[str | None, Query(alias="modelArnEquals")] = None,
    name_contains: Annotated[str | None, Query(alias="nameContains")] = None,
    max_results: Annotated[str | None, Query(alias="maxResults")] = None,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
    sort_by: Annotated[str | None, Query(alias="sortBy")] = None,
    sort_order: Annotated[str | None, Query(alias="sortOrder")] = None,
) -> dict[str, Any]:
    """Bedrock's List; ``statusEquals=Deleted`` (a tuneforge extension) lists deleted deployments."""
    limit, descending = schemas.parse_paging(max_results, sort_by, sort_order)
    serving_schemas.check_list_filters(status_equals, name_contains)
    filters = ThroughputFilter(
        creation_time_after=schemas.parse_time(creation_time_after, "creationTimeAfter"),
        creation_time_before=schemas.parse_time(creation_time_before, "creationTimeBefore"),
        status_equals=status_equals,
        model_arn_equals=model_arn_equals,
        name_contains=name_contains,
        sort_descending=descending,
    )
    return schemas.list_page(
        services.page_tokens,
        "ListProvisionedModelThroughputs",
        filters,
        next_token,
        lambda after: services.throughput.list_throughputs(filters, after, limit),
        "provisionedModelSummaries",
        lambda items: _with_meters(services, manager, items, details=False),
    )


@router.get("/provisioned-model-throughput/{provisioned_model_id:path}")
def get_provisioned_model_throughput(
    provisioned_model_id: str, services: ServicesDep, manager: ManagerDep
) -> dict[str, Any]:
    row = services.throughput.get(provisioned_model_id)
    return _with_meters(services, manager, [row], details=True)[0]


@router.patch("/provisioned-model-throughput/{provisioned_model_id:path}")
async def update_provisioned_model_throughput(
    provisioned_model_id: str, request: Request, services: ServicesDep
) -> dict[str, Any]:
    name, model_id = serving_schemas.parse_update_throughput(
        parse_body(await request.body(), "UpdateProvisionedModelThroughput")
    )
    services.throughput.update(provisioned_model_id, name, model_id)
    return {}


@router.delete("/provisioned-model-throughput/{provisioned_model_id:path}")
def delete_provisioned_model_throughput(provisioned_model_id: str, services: ServicesDep) -> dict[str, Any]:
    services.throughput.delete(provisioned_model_id)
    return {}


# -- invocation logging ------------------------------------------------------------------------------


@router.put("/logging/modelinvocations")
async def put_model_invocation_logging_configuration(request: Request, services: ServicesDep) -> dict[str, Any]:
    services.invocation_logs.put(
        serving_schemas.parse_logging_config(parse_body(await request.body(), "PutModelInvocationLoggingConfiguration"))
    )
    return {}


@router.get("/logging/modelinvocations")
def get_model_invocation_logging_configuration(services: ServicesDep) -> dict[str, Any]:
    config = services.invocation_logs.get()
    return {} if config is None else {"loggingConfig": config}


@router.delete("/logging/modelinvocations")
def delete_model_invocation_logging_configuration(services: ServicesDep) -> dict[str, Any]:
    services.invocation_logs.delete()
    return {}


# -- usage (tuneforge extension) ---------------------------------------------------------------------


@router.get("/usage")
def get_usage(services: ServicesDep) -> dict[str, Any]:
    """Hours, tokens and cost per deployment and per model (``tuneforge usage``)."""
    services.meter.flush()
    return usage_report(services.db, services.catalog)
