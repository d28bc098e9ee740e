"""Batch inference routes: HTTP in, :class:`~tuneforge.jobs.invocations.InvocationJobService` call, camelCase out."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from tuneforge.api.bedrock import invocation_schemas, schemas
from tuneforge.api.bedrock.shapes import parse_body
from tuneforge.api.deps import get_services
from tuneforge.jobs.invocations import STATUSES, InvocationJobFilter
from tuneforge.services import Services

router = APIRouter()
ServicesDep = Annotated[Services, Depends(get_services)]


@router.post("/model-invocation-job")
async def create_model_invocation_job(request: Request, services: ServicesDep) -> dict[str, Any]:
    """200, not 201: botocore's CreateModelInvocationJob says so."""
    parsed = invocation_schemas.parse_create_invocation_job(
        parse_body(await request.body(), "CreateModelInvocationJob")
    )
    job = await run_in_threadpool(services.invocation_jobs.create, parsed)
    return {"jobArn": job.arn}


@router.get("/model-invocation-jobs")
def list_model_invocation_jobs(
    services: ServicesDep,
    submit_time_after: Annotated[str | None, Query(alias="submitTimeAfter")] = None,
    submit_time_before: Annotated[str | None, Query(alias="submitTimeBefore")] = None,
    status_equals: Annotated[str | None, Query(alias="statusEquals")] = None,
    name_contains: Annotated[str | None, Query(alias="nameContains")] = None,
    max_results: Annotated[str | None, Query(alias="maxResults")] = None,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
    sort_by: Annotated[str | None, Query(alias="sortBy")] = None,
    sort_order: Annotated[str | None, Query(alias="sortOrder")] = None,
) -> dict[str, Any]:
    limit, descending = schemas.parse_paging(max_results, sort_by, sort_order)
    c = schemas.Checker()
    c.string({"statusEquals": status_equals}, "statusEquals", enum=STATUSES)
    c.string(
        {"nameContains": name_contains},
        "nameContains",
        max_len=63,
        pattern=invocation_schemas.INVOCATION_JOB_NAME_PATTERN,
    )
    c.raise_if_any()
    filters = InvocationJobFilter(
        submit_time_after=schemas.parse_time(submit_time_after, "submitTimeAfter"),
        submit_time_before=schemas.parse_time(submit_time_before, "submitTimeBefore"),
        status_equals=status_equals,
        name_contains=name_contains,
        sort_descending=descending,
    )
    return schemas.list_page(
        services.page_tokens,
        "ListModelInvocationJobs",
        filters,
        next_token,
        lambda after: services.invocation_jobs.list_jobs(filters, after, limit),
        "invocationJobSummaries",
        lambda items: [invocation_schemas.invocation_job(j) for j in items],
    )


@router.get("/model-invocation-job/{job_identifier:path}")
def get_model_invocation_job(job_identifier: str, services: ServicesDep) -> dict[str, Any]:
    return invocation_schemas.invocation_job(services.invocation_jobs.get(job_identifier))


@router.post("/model-invocation-job/{job_identifier:path}/stop")
def stop_model_invocation_job(job_identifier: str, services: ServicesDep) -> dict[str, Any]:
    services.invocation_jobs.stop(job_identifier)
    return {}
