"""Custom Model Import routes: HTTP in, :class:`~tuneforge.catalog.imported.ImportService` call, camelCase out."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tuneforge.api.bedrock import import_schemas, schemas
from tuneforge.api.bedrock.shapes import parse_body
from tuneforge.api.deps import get_services
from tuneforge.catalog.imported import ImportedModelFilter, ImportJobFilter
from tuneforge.services import Services

router = APIRouter()
ServicesDep = Annotated[Services, Depends(get_services)]


@router.post("/model-import-jobs", status_code=201)
async def create_model_import_job(request: Request, services: ServicesDep) -> JSONResponse:
    parsed = import_schemas.parse_create_import_job(parse_body(await request.body(), "CreateModelImportJob"))
    # create() reads the source's files (and waits for the GGUF inspector): off the event loop.
    job = await run_in_threadpool(services.imports.create, parsed)
    return JSONResponse({"jobArn": job.arn}, status_code=201)


@router.get("/model-import-jobs")
def list_model_import_jobs(
    services: ServicesDep,
    creation_time_after: Annotated[str | None, Query(alias="creationTimeAfter")] = None,
    creation_time_before: Annotated[str | None, Query(alias="creationTimeBefore")] = None,
    status_equals: Annotated[str | None, Query(alias="statusEquals")] = None,
    name_contains: Annotated[str | None, Query(alias="nameContains")] = None,
    max_results: Annotated[str | None, Query(alias="maxResults")] = None,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
    sort_by: Annotated[str | None, Query(alias="sortBy")] = None,
    sort_order: Annotated[str | None, Query(alias="sortOrder")] = None,
) -> dict[str, Any]:
    limit, descending = schemas.parse_paging(max_results, sort_by, sort_order)
    c = schemas.Checker()
    c.string({"statusEquals": status_equals}, "statusEquals", enum=import_schemas.IMPORT_JOB_STATUSES)
    c.string({"nameContains": name_contains}, "nameContains", max_len=63, pattern=schemas.JOB_NAME_PATTERN)
    c.raise_if_any()
    filters = ImportJobFilter(
        creation_time_after=schemas.parse_time(creation_time_after, "creationTimeAfter"),
        creation_time_before=schemas.parse_time(creation_time_before, "creationTimeBefore"),
        status_equals=status_equals,
        name_contains=name_contains,
        sort_descending=descending,
    )
    return schemas.list_page(
        services.page_tokens,
        "ListModelImportJobs",
        filters,
        next_token,
        lambda after: services.imports.list_jobs(filters, after, limit),
        "modelImportJobSummaries",
        lambda items: [import_schemas.import_job_summary(j) for j in items],
    )


@router.get("/model-import-jobs/{job_identifier:path}")
def get_model_import_job(job_identifier: str, services: ServicesDep) -> dict[str, Any]:
    return import_schemas.import_job_details(services.imports.get_job(job_identifier))


@router.get("/imported-models")
def list_imported_models(
    services: ServicesDep,
    creation_time_before: Annotated[str | None, Query(alias="creationTimeBefore")] = None,
    creation_time_after: Annotated[str | None, Query(alias="creationTimeAfter")] = None,
    name_contains: Annotated[str | None, Query(alias="nameContains")] = None,
    max_results: Annotated[str | None, Query(alias="maxResults")] = None,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
    sort_by: Annotated[str | None, Query(alias="sortBy")] = None,
    sort_order: Annotated[str | None, Query(alias="sortOrder")] = None,
) -> dict[str, Any]:
    limit, descending = schemas.parse_paging(max_results, sort_by, sort_order)
    c = schemas.Checker()
    c.string({"nameContains": name_contains}, "nameContains", max_len=63, pattern=schemas.MODEL_NAME_PATTERN)
    c.raise_if_any()
    filters = ImportedModelFilter(
        creation_time_after=schemas.parse_time(creation_time_after, "creationTimeAfter"),
        creation_time_before=schemas.parse_time(creation_time_before, "creationTimeBefore"),
        name_contains=name_contains,
        sort_descending=descending,
    )
    return schemas.list_page(
        services.page_tokens,
        "ListImportedModels",
        filters,
        next_token,
        lambda after: services.imports.list_models(filters, after, limit),
        "modelSummaries",
        lambda items: [import_schemas.imported_model_summary(m) for m in items],
    )


@router.get("/imported-models/{model_identifier:path}")
def get_imported_model(model_identifier: str, services: ServicesDep) -> dict[str, Any]:
    return import_schemas.imported_model_details(services.imports.get_model(model_identifier))


@router.delete("/imported-models/{model_identifier:path}")
def delete_imported_model(model_identifier: str, services: ServicesDep) -> dict[str, Any]:
    services.imports.delete_model(model_identifier)
    return {}
