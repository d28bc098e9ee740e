"""Customization jobs in the console: the list, the job wizard, the job page, output downloads.

The wizard ends in the same ``CreateModelCustomizationJob`` parsing and service call as the
Bedrock route, so what the API refuses (a duplicate job name, a bad hyperparameter, an
incompatible teacher) is shown on the review page with the API's own message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, BinaryIO
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from tuneforge.api.bedrock import schemas
from tuneforge.api.bedrock.shapes import parse_body
from tuneforge.api.bodies import BodyTooLarge, capped
from tuneforge.catalog.hyperparameters import HyperParameterError, resolve
from tuneforge.catalog.models import DISTILLATION
from tuneforge.console import jobs_wizard as wizard
from tuneforge.console.jobs_chart import loss_chart
from tuneforge.console.pages import ApiError, CsrfChecked, ServicesDep, partial, render, require_csrf, see_other
from tuneforge.db.tables import Job, JobEvent
from tuneforge.errors import ServiceError, ValidationException
from tuneforge.jobs.service import TERMINAL, JobFilter
from tuneforge.services import Services
from tuneforge.storage import StorageError

router = APIRouter()

FORM_OVERHEAD = 64 * 1024
"""What an upload's body may carry beyond the file: the wizard's other fields and multipart framing."""
LIST_LIMIT = 100
EVENTS_LIMIT = 10_000
RECENT_EVENTS = 15


# -- list ------------------------------------------------------------------------------------------


@router.get("/console/jobs", response_class=HTMLResponse, include_in_schema=False)
def jobs_list(request: Request, services: ServicesDep) -> Response:
    page = services.jobs.list_jobs(JobFilter(), None, LIST_LIMIT)
    return render(request, "jobs.html", jobs=page.items, more=page.next_cursor is not None)


# -- wizard ----------------------------------------------------------------------------------------


@router.get("/console/jobs/new", response_class=HTMLResponse, include_in_schema=False)
async def wizard_step(request: Request, services: ServicesDep, step: Annotated[str, Query()] = "approach") -> Response:
    state = wizard.WizardState.of(dict(request.query_params))
    return await run_in_threadpool(_wizard_page, request, services, state, step, None)


@router.post("/console/jobs/new/upload", response_class=HTMLResponse, include_in_schema=False)
async def wizard_upload(request: Request, services: ServicesDep) -> Response:
    """The data step's upload: the file streamed to ``s3://tuneforge/console-uploads/...``, then validation.

    A body past the cap (declared, or counted as it streams in) is refused without reading the
    rest; otherwise the multipart parser spools the file to disk and it is copied to the store in
    chunks, never whole in memory.
    """
    limit = services.settings.max_training_file_bytes
    declared = request.headers.get("content-length", "")
    too_large: ServiceError = ValidationException(wizard.too_large_message(limit))
    if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        state = wizard.WizardState.of(dict(request.query_params))
        return await run_in_threadpool(_wizard_page, request, services, state, "data", too_large)
    reading = capped(request, limit + FORM_OVERHEAD)
    try:
        form = await reading.form(max_files=1)
    except BodyTooLarge:
        state = wizard.WizardState.of(dict(request.query_params))
        return await run_in_threadpool(_wizard_page, request, services, state, "data", too_large)
    await require_csrf(reading)
    state = wizard.WizardState.of({k: v for k, v in form.items() if isinstance(v, str)})
    upload = form.get("file")
    error: ServiceError
    if not isinstance(upload, UploadFile) or not upload.filename:
        error = ValidationException("Choose a JSONL file to upload, or give an s3:// URI instead")
    else:
        try:
            uri = await run_in_threadpool(wizard.store_upload, services, upload.file, upload.filename)
        except ServiceError as exc:
            error = exc
        else:
            return see_other("/console/jobs/new?" + state.query(step="validate", training_uri=uri))
    return await run_in_threadpool(_wizard_page, request, services, state, "data", error)


@router.post("/console/jobs/new", response_class=HTMLResponse, include_in_schema=False, dependencies=[CsrfChecked])
async def wizard_create(request: Request, services: ServicesDep) -> Response:
    form = await request.form()
    state = wizard.WizardState.of({k: v for k, v in form.items() if isinstance(v, str)})
    base = wizard.resolve_model(services, state.get("base"))
    if base is None:
        return await run_in_threadpool(_wizard_page, request, services, state, "models", None)
    body = wizard.request_body(services, state, base)
    try:
        parsed = schemas.parse_create_job(parse_body(json.dumps(body).encode(), "CreateModelCustomizationJob"))
        job = await run_in_threadpool(services.jobs.create, parsed)
    except ServiceError as exc:
        return await run_in_threadpool(_wizard_page, request, services, state, "review", exc)
    return see_other(f"/console/jobs/{job.id}")


def _wizard_page(
    request: Request, services: Services, state: wizard.WizardState, step: str, error: ServiceError | None
) -> Response:
    """One step of the wizard; a step whose earlier answers are missing falls back to where they are asked."""
    step = step if step in wizard.STEPS else "approach"
    ctype = state.customization_type
    base = wizard.resolve_model(services, state.get("base"))
    context: dict[str, Any] = {}
    if not ctype:
        step = "approach"
    elif step not in ("approach", "models") and base is None:
        step = "models"
    if step == "models" and ctype:
        context["bases"] = wizard.students(services, ctype)
        if ctype == DISTILLATION and base is not None:
            context["teachers"] = wizard.teacher_choices(services, base)
            chosen = next((c for c in context["teachers"] if c.model.model_id == state.get("teacher")), None)
            if state.get("teacher") and state.get("confirm_models") and error is None:
                if chosen is None:
                    error = ValidationException(f"The teacher model {state.get('teacher')} does not exist.")
                elif chosen.refusal:
                    error = ValidationException(chosen.refusal)
                else:
                    return see_other("/console/jobs/new?" + _without(state, "confirm_models").query(step="data"))
        elif ctype != DISTILLATION and base is not None and state.get("confirm_models"):
            return see_other("/console/jobs/new?" + _without(state, "confirm_models").query(step="data"))
    if step not in ("approach", "models", "data") and not state.get("training_uri"):
        step = "data"
    if step == "validate" and base is not None:
        try:
            services.store.check(state.get("training_uri"))
            lines = wizard.preview(services, state.get("training_uri"))
            if lines is None:
                context["preview_withheld"] = True
            else:
                context["preview"] = lines
            context["result"] = wizard.run_preflight(
                services,
                state.get("training_uri"),
                base,
                ctype,
                wizard.changed_hyperparameters(base.hyperparameter_specs(ctype), state),
            )
        except (ServiceError, StorageError, OSError) as exc:
            error = exc if isinstance(exc, ServiceError) else ValidationException(f"{state.get('training_uri')}: {exc}")
    if step == "hyperparameters" and base is not None:
        context["fields"] = wizard.hyperparameter_fields(base.hyperparameter_specs(ctype), state)
    if step == "output":
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        context["defaults"] = {
            "job_name": state.get("job_name") or f"{ctype.lower().replace('_', '-')}-{stamp}",
            "model_name": state.get("model_name") or f"{ctype.lower().replace('_', '-')}-{stamp}-model",
            "output_uri": state.get("output_uri") or f"s3://{wizard.UPLOAD_BUCKET}/outputs/",
            "role_arn": state.get("role_arn") or wizard.default_role(services),
        }
    if step == "review" and base is not None:
        body = wizard.request_body(services, state, base)
        if error is None:
            try:
                resolve(base.hyperparameter_specs(ctype), body.get("hyperParameters", {}))
            except HyperParameterError as exc:
                error = ValidationException(f"{exc} (the API refuses it too: go back to Hyperparameters)")
        context.update(
            body=json.dumps(body, indent=2),
            boto3=wizard.boto3_code(body),
            cli=wizard.cli_code(body),
        )
    return render(
        request,
        "wizard.html",
        status_code=error.status if error is not None and step == "review" else 200,
        step=step,
        steps=wizard.STEPS,
        titles=wizard.STEP_TITLES,
        approaches=wizard.APPROACHES,
        state=state,
        base=base,
        error=ApiError.of(error) if error is not None else None,
        **context,
    )


def _without(state: wizard.WizardState, *keys: str) -> wizard.WizardState:
    return wizard.WizardState({k: v for k, v in state.values.items() if k not in keys})


# -- job page --------------------------------------------------------------------------------------


@router.get("/console/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
def job_page(request: Request, job_id: str, services: ServicesDep) -> Response:
    try:
        context = _job_context(services, job_id)
    except ServiceError as exc:
        return render(request, "error.html", status_code=exc.status, error=ApiError.of(exc))
    return render(request, "job.html", **context)


@router.get("/console/jobs/{job_id}/live", response_class=HTMLResponse, include_in_schema=False)
def job_live(request: Request, job_id: str, services: ServicesDep) -> Response:
    """The job page's live part: status, stages, chart, throughput, events; stops refreshing at the end."""
    context = _job_context(services, job_id)
    headers = {"X-Refresh-Stop": "1"} if context["job"].status in TERMINAL else None
    return partial(request, "_job_live.html", headers=headers, **context)


@router.post(
    "/console/jobs/{job_id}/stop", response_class=HTMLResponse, include_in_schema=False, dependencies=[CsrfChecked]
)
async def job_stop(request: Request, job_id: str, services: ServicesDep) -> Response:
    try:
        job = await run_in_threadpool(services.jobs.get, job_id)
        await run_in_threadpool(services.jobs.stop, job.arn)
    except ServiceError as exc:
        try:
            context = await run_in_threadpool(_job_context, services, job_id)
        except ServiceError:
            return render(request, "error.html", status_code=exc.status, error=ApiError.of(exc))
        return render(request, "job.html", status_code=exc.status, error=ApiError.of(exc), **context)
    return see_other(f"/console/jobs/{job.id}")


def _job_context(services: Services, job_id: str) -> dict[str, Any]:
    job: Job = services.jobs.get(job_id)
    events: list[JobEvent] = services.jobs.events(job.id, limit=EVENTS_LIMIT)
    progress = [e.data for e in events if e.kind == "progress" and "loss" in e.data]
    training = [(int(p["step"]), float(p["loss"])) for p in progress]
    total_steps = int(progress[-1].get("totalSteps", 0)) if progress else 0
    chart = loss_chart(training, list(job.validation_losses or []), total_steps)
    latest = progress[-1] if progress else None
    details = schemas.job_details(job)
    artifacts: dict[str, str] = details.get("outputArtifacts") or {}
    return {
        "job": job,
        "details": details,
        "stages": details.get("statusDetails") or {},
        "chart": chart,
        "latest": latest,
        "recent": [e for e in events if e.kind != "progress"][-RECENT_EVENTS:],
        "artifacts": [(name, uri, services.store.exists(uri)) for name, uri in artifacts.items()],
        "report": _distillation_report(services, job, artifacts),
        "running": job.status not in TERMINAL,
        "time": schemas.iso,
    }


def _distillation_report(services: Services, job: Job, artifacts: dict[str, str]) -> dict[str, Any] | None:
    uri = artifacts.get("distillationReport")
    if job.customization_type != DISTILLATION or uri is None:
        return None
    try:
        report: dict[str, Any] = json.loads(services.store.read_bytes(uri))
    except (StorageError, ValueError):
        return None
    return report


# -- downloads -------------------------------------------------------------------------------------


@router.get("/console/objects", include_in_schema=False)
def download(request: Request, services: ServicesDep, uri: Annotated[str, Query()]) -> Response:
    """An object of the store, streamed from it: only ``s3://`` URIs, confined to the object root."""
    if not uri.startswith("s3://"):
        return render(
            request,
            "error.html",
            status_code=400,
            error=ApiError("ValidationException", f"Only s3:// objects of the store can be downloaded, not {uri}"),
        )
    try:
        found = services.store.exists(uri)
        handle = services.store.open_read(uri) if found else None
    except StorageError as exc:
        return render(request, "error.html", status_code=400, error=ApiError("ValidationException", str(exc)))
    if handle is None:
        return render(
            request, "error.html", status_code=404, error=ApiError("ResourceNotFoundException", f"{uri} does not exist")
        )
    name = uri.rsplit("/", 1)[-1] or "object"
    return StreamingResponse(
        _chunks(handle),
        media_type="application/octet-stream",
        headers={"content-disposition": f"attachment; filename*=utf-8''{quote(name)}"},
    )


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    """The object in 1 MiB pieces, closing the store's stream when the response ends (or is cut off)."""
    with handle:
        while chunk := handle.read(1 << 20):
            yield chunk
