"""Bedrock control plane routes: HTTP in, service call, camelCase out. Nothing else lives here."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tuneforge.api.bedrock import schemas
from tuneforge.api.bedrock.shapes import parse_body
from tuneforge.api.deps import get_services
from tuneforge.catalog.custom import CustomModelFilter
from tuneforge.jobs.service import JobFilter
from tuneforge.services import Services

router = APIRouter()
ServicesDep = Annotated[Services, Depends(get_services)]


# -- foundation models ---------------------------------------------------------------------------


@router.get("/foundation-models")
def list_foundation_models(
    services: ServicesDep,
    by_provider: Annotated[str | None, Query(alias="byProvider")] = None,
    by_customization_type: Annotated[str | None, Query(alias="byCustomizationType")] = None,
    by_output_modality: Annotated[str | None, Query(alias="byOutputModality")] = None,
    by_inference_type: Annotated[str | None, Query(alias="byInferenceType")] = None,
) -> dict[str, Any]:
    c = schemas.Checker()
    c.string({"byProvider": by_provider}, "byProvider", pattern=schemas.PROVIDER_PATTERN)
    c.string(
        {"byCustomizationType": by_customization_type},
        "byCustomizationType",
        enum=("FINE_TUNING", "CONTINUED_PRE_TRAINING", "DISTILLATION"),
    )
    c.string({"byOutputModality": by_output_modality}, "byOutputModality", enum=("TEXT", "IMAGE", "EMBEDDING"))
    c.string({"byInferenceType": by_inference_type}, "byInferenceType", enum=("ON_DEMAND", "PROVISIONED"))
    c.raise_if_any()
    models = [
        m
        for m in services.catalog.foundation_models()
        if (by_provider is None or m.provider.lower() == by_provider.lower())
        and (by_customization_type is None or by_customization_type in m.customizations)
        and (by_output_modality is None or by_output_modality in m.output_modalities)
        and (by_inference_type is None or by_inference_type in m.inference_types)
    ]
    return {"modelSummaries": [schemas.foundation_model(m, services.arns) for m in models]}


@router.get("/foundation-models/{model_identifier:path}")
def get_foundation_model(model_identifier: str, services: ServicesDep) -> dict[str, Any]:
    model = services.catalog.get(model_identifier)
    return {"modelDetails": schemas.foundation_model(model, services.arns)}


# -- customization jobs --------------------------------------------------------------------------


@router.post("/model-customization-jobs", status_code=201)
async def create_model_customization_job(request: Request, services: ServicesDep) -> JSONResponse:
    parsed = schemas.parse_create_job(parse_body(await request.body(), "CreateModelCustomizationJob"))
    # Off the event loop: the memory plan reads the training file to find its longest record.
    job = await run_in_threadpool(services.jobs.create, parsed)
    return JSONResponse({"jobArn": job.arn}, status_code=201)


@router.get("/model-customization-jobs")
def list_model_customization_jobs(
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
    c.string({"statusEquals": status_equals}, "statusEquals", enum=schemas.JOB_STATUSES)
    c.string({"nameContains": name_contains}, "nameContains", max_len=63, pattern=schemas.JOB_NAME_PATTERN)
    c.raise_if_any()
    filters = JobFilter(
        creation_time_after=schemas.parse_time(creation_time_after, "creationTimeAfter"),
        creation_time_before=schemas.parse_time(creation_time_before, "creationTimeBefore"),
        status_equals=status_equals,
        name_contains=name_contains,
        sort_descending=descending,
    )
    return schemas.list_page(
        services.page_tokens,
        "ListModelCustomizationJobs",
        filters,
        next_token,
        lambda after: services.jobs.list_jobs(filters, after, limit),
        "modelCustomizationJobSummaries",
        lambda items: [schemas.job_summary(j) for j in items],
    )


@router.post("/model-customization-jobs/{job_identifier:path}/stop")
def stop_model_customization_job(job_identifier: str, services: ServicesDep) -> dict[str, Any]:
    services.jobs.stop(job_identifier)
    return {}


@router.get("/model-customization-jobs/{job_identifier:path}/events")
def list_model_customization_job_events(
    job_identifier: str,
    services: ServicesDep,
    after: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """tuneforge extension: progress (step, loss, tokens/s), stage changes and log lines."""
    events = services.jobs.events(job_identifier, after_id=after)
    return {"events": [{"id": e.id, "time": schemas.iso(e.created_at), "kind": e.kind, "data": e.data} for e in events]}


@router.get("/model-customization-jobs/{job_identifier:path}")
def get_model_customization_job(job_identifier: str, services: ServicesDep) -> dict[str, Any]:
    return schemas.job_details(services.jobs.get(job_identifier))


# -- custom models -------------------------------------------------------------------------------


@router.get("/custom-models")
def list_custom_models(
    services: ServicesDep,
    creation_time_before: Annotated[str | None, Query(alias="creationTimeBefore")] = None,
    creation_time_after: Annotated[str | None, Query(alias="creationTimeAfter")] = None,
    name_contains: Annotated[str | None, Query(alias="nameContains")] = None,
    base_model_arn_equals: Annotated[str | None, Query(alias="baseModelArnEquals")] = None,
    foundation_model_arn_equals: Annotated[str | None, Query(alias="foundationModelArnEquals")] = None,
    max_results: Annotated[str | None, Query(alias="maxResults")] = None,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
    sort_by: Annotated[str | None, Query(alias="sortBy")] = None,
    sort_order: Annotated[str | None, Query(alias="sortOrder")] = None,
    is_owned: Annotated[str | None, Query(alias="isOwned")] = None,
    model_status: Annotated[str | None, Query(alias="modelStatus")] = None,
) -> dict[str, Any]:
    limit, descending = schemas.parse_paging(max_results, sort_by, sort_order)
    c = schemas.Checker()
    c.string({"nameContains": name_contains}, "nameContains", max_len=63, pattern=schemas.MODEL_NAME_PATTERN)
    c.string({"modelStatus": model_status}, "modelStatus", enum=("Active", "Creating", "Failed"))
    c.string({"isOwned": is_owned}, "isOwned", enum=("true", "false"))
    c.raise_if_any()
    if is_owned == "false":
        # Every model on a tuneforge server belongs to its one account.
        return {"modelSummaries": []}
    filters = CustomModelFilter(
        creation_time_after=schemas.parse_time(creation_time_after, "creationTimeAfter"),
        creation_time_before=schemas.parse_time(creation_time_before, "creationTimeBefore"),
        name_contains=name_contains,
        base_model_arn_equals=base_model_arn_equals,
        foundation_model_arn_equals=foundation_model_arn_equals,
        model_status=model_status,
        sort_descending=descending,
    )
    account = services.settings.account_id
    return schemas.list_page(
        services.page_tokens,
        "ListCustomModels",
        filters,
        next_token,
        lambda after: services.custom_models.list_models(filters, after, limit),
        "modelSummaries",
        lambda items: [schemas.custom_model_summary(m, account) for m in items],
    )


@router.get("/custom-models/{model_identifier:path}")
def get_custom_model(model_identifier: str, services: ServicesDep) -> dict[str, Any]:
    return schemas.custom_model_details(services.custom_models.get(model_identifier))


@router.delete("/custom-models/{model_identifier:path}")
def delete_custom_model(model_identifier: str, services: ServicesDep) -> dict[str, Any]:
    services.custom_models.delete(model_identifier)
    return {}


# -- tags ----------------------------------------------------------------------------------------


@router.post("/tagResource")
async def tag_resource(request: Request, services: ServicesDep) -> dict[str, Any]:
    arn, tags = schemas.parse_tag_resource(parse_body(await request.body(), "TagResource"))
    services.tags.tag(arn, tags)
    return {}


@router.post("/untagResource")
async def untag_resource(request: Request, services: ServicesDep) -> dict[str, Any]:
    arn, keys = schemas.parse_untag_resource(parse_body(await request.body(), "UntagResource"))
    services.tags.untag(arn, keys)
    return {}


@router.post("/listTagsForResource")
async def list_tags_for_resource(request: Request, services: ServicesDep) -> dict[str, Any]:
    arn = schemas.parse_resource_arn(parse_body(await request.body(), "ListTagsForResource"))
    return {"tags": services.tags.list_tags(arn)}
