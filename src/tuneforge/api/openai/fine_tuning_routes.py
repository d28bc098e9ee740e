"""OpenAI's ``/v1/fine_tuning/jobs`` routes (create, list, retrieve, cancel, pause, resume, events,
checkpoints) over :class:`~tuneforge.jobs.openai_fine_tuning.FineTuningService`. HTTP only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from tuneforge.api.bodies import json_object
from tuneforge.api.deps import get_services
from tuneforge.api.openai.fine_tuning_protocol import (
    CreateFineTuningJob,
    checkpoint_object,
    event_object,
    job_object,
    page,
)
from tuneforge.api.openai.protocol import parse_request
from tuneforge.jobs.openai_fine_tuning import FineTuningService
from tuneforge.services import Services
from tuneforge.serving.runtime import InvalidParameter

router = APIRouter(prefix="/v1/fine_tuning/jobs")
ServicesDep = Annotated[Services, Depends(get_services)]
Limit = Annotated[int, Query(ge=1, le=100)]


def _service(services: Services) -> FineTuningService:
    return services.fine_tuning


@router.post("")
async def create_job(request: Request, services: ServicesDep) -> dict[str, Any]:
    parsed = parse_request(CreateFineTuningJob, json_object(await request.body())).typed()
    service = _service(services)
    found = await run_in_threadpool(service.create, parsed)
    return job_object(found, service)


@router.get("")
def list_jobs(request: Request, services: ServicesDep, after: str | None = None, limit: Limit = 20) -> dict[str, Any]:
    metadata = {
        key[len("metadata[") : -1]: value
        for key, value in request.query_params.items()
        if key.startswith("metadata[") and key.endswith("]")
    }
    service = _service(services)
    items, has_more = service.list_jobs(after, limit, metadata or None)
    return page([job_object(found, service) for found in items], has_more)


@router.get("/{job_id}")
def retrieve_job(job_id: str, services: ServicesDep) -> dict[str, Any]:
    service = _service(services)
    return job_object(service.get(job_id), service)


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, services: ServicesDep) -> dict[str, Any]:
    service = _service(services)
    return job_object(service.cancel(job_id), service)


@router.post("/{job_id}/pause")
def pause_job(job_id: str, services: ServicesDep) -> dict[str, Any]:
    service = _service(services)
    return job_object(service.pause(job_id), service)


@router.post("/{job_id}/resume")
def resume_job(job_id: str, services: ServicesDep) -> dict[str, Any]:
    service = _service(services)
    return job_object(service.resume(job_id), service)


@router.get("/{job_id}/events")
def list_events(job_id: str, services: ServicesDep, after: str | None = None, limit: Limit = 20) -> dict[str, Any]:
    events, has_more = _service(services).events(job_id, after, limit)
    return page([event_object(event) for event in events], has_more)


@router.get("/{job_id}/checkpoints")
def list_checkpoints(job_id: str, services: ServicesDep, after: str | None = None, limit: Limit = 10) -> dict[str, Any]:
    service = _service(services)
    found = service.get(job_id)
    objects = [checkpoint_object(found, checkpoint) for checkpoint in service.checkpoints(job_id)]
    if after:
        ids = [entry["id"] for entry in objects]
        if after not in ids:
            raise InvalidParameter(f"No checkpoint {after} in job {job_id}", "after")
        objects = objects[ids.index(after) + 1 :]
    return page(objects[:limit], len(objects) > limit)
