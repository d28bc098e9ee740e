"""Evaluation job routes: HTTP in, :class:`~tuneforge.jobs.evaluations.EvaluationJobService` call, camelCase out."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tuneforge.api.bedrock import evaluation_schemas, schemas
from tuneforge.api.bedrock.shapes import parse_body
from tuneforge.api.deps import get_services
from tuneforge.jobs.evaluations import APPLICATION_TYPES, STATUSES, EvaluationJobFilter
from tuneforge.services import Services

router = APIRouter()
ServicesDep = Annotated[Services, Depends(get_services)]


@router.post("/evaluation-jobs/batch-delete")
async def batch_delete_evaluation_job(request: Request, services: ServicesDep) -> JSONResponse:
    """202, as botocore's BatchDeleteEvaluationJob says; each identifier succeeds or fails on its own."""
    body = parse_body(await request.body(), "BatchDeleteEvaluationJob")
    identifiers = body.get("jobIdentifiers")
    c = schemas.Checker()
    if not isinstance(identifiers, list) or not 1 <= len(identifiers) <= 25:
        c.violations.append(
            "Value at 'jobIdentifiers' failed to satisfy constraint: Member must have length between 1 and 25"
        )
    c.raise_if_any()
    assert isinstance(identifiers, list)
    deleted, errors = await run_in_threadpool(services.evaluation_jobs.batch_delete, [str(i) for i in identifiers])
    return JSONResponse({"errors": errors, "evaluationJobs": deleted}, status_code=202)


@router.post("/evaluation-jobs")
async def create_evaluation_job(request: Request, services: ServicesDep) -> JSONResponse:
    """202, as botocore's CreateEvaluationJob says."""
    parsed = evaluation_schemas.parse_create_evaluation_job(parse_body(await request.body(), "CreateEvaluationJob"))
    job = await run_in_threadpool(services.evaluation_jobs.create, parsed)
    return JSONResponse({"jobArn": job.arn}, status_code=202)


@router.get("/evaluation-jobs")
def list_evaluation_jobs(
    services: ServicesDep,
    creation_time_after: Annotated[str | None, Query(alias="creationTimeAfter")] = None,
    creation_time_before: Annotated[str | None, Query(alias="creationTimeBefore")] = None,
    status_equals: Annotated[str | None, Query(alias="statusEquals")] = None,
    application_type_equals: Annotated[str | None, Query(alias="applicationTypeEquals")] = None,
    name_contains: Annotated[str | None, Query(alias="nameContains")] = None,
    max_results: Annotated[str | None, Query(alias="maxResults")] = None,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
    sort_by: Annotated[str | None, Query(alias="sortBy")] = None,
    sort_order: Annotated[str | None, Query(alias="sortOrder")] = None,
) -> dict[str, Any]:
    limit, descending = schemas.parse_paging(max_results, sort_by, sort_order)
    c = schemas.Checker()
    c.string({"statusEquals": status_equals}, "statusEquals", enum=STATUSES)
    c.string({"applicationTypeEquals": application_type_equals}, "applicationTypeEquals", enum=APPLICATION_TYPES)
    c.string(
        {"nameContains": name_contains},
        "nameContains",
        max_len=63,
        pattern=evaluation_schemas.EVALUATION_JOB_NAME_PATTERN,
    )
    c.raise_if_any()
    filters = EvaluationJobFilter(
        creation_time_after=schemas.parse_time(creation_time_after, "creationTimeAfter"),
        creation_time_before=schemas.parse_time(creation_time_before, "creationTimeBefore"),
        status_equals=status_equals,
        application_type_equals=application_type_equals,
        name_contains=name_contains,
        sort_descending=descending,
    )
    return schemas.list_page(
        services.page_tokens,
        "ListEvaluationJobs",
        filters,
        next_token,
        lambda after: services.evaluation_jobs.list_jobs(filters, after, limit),
        "jobSummaries",
        lambda items: [evaluation_schemas.evaluation_summary(j) for j in items],
    )


@router.get("/evaluation-jobs/{job_identifier:path}")
def get_evaluation_job(job_identifier: str, services: ServicesDep) -> dict[str, Any]:
    return evaluation_schemas.evaluation_job(services.evaluation_jobs.get(job_identifier))


@router.post("/evaluation-job/{job_identifier:path}/stop")
def stop_evaluation_job(job_identifier: str, services: ServicesDep) -> dict[str, Any]:
    services.evaluation_jobs.stop(job_identifier)
    return {}
