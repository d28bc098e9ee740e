"""Provisioned throughput and custom model deployments: list, create (after a cost confirmation), detail, delete.

Creating goes through the API's own request parsing (``parse_body`` against botocore's input shape,
then ``serving_schemas.parse_create_throughput`` / ``deployment_schemas.parse_create_deployment``)
and the same services, so a refusal reads exactly as a boto3 user would see it. A provisioned
throughput bills by the hour from the moment it exists, so the console asks twice: the form is
checked and priced on a review page (price per hour and per day, the commitment's terms, the idle
timeout), and only an explicit confirmation there creates it. The request is carried from review to
create as the exact JSON body with a ``clientRequestToken``, so a double submit buys one, not two.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from tuneforge.api.bedrock import deployment_schemas, serving_schemas
from tuneforge.api.bedrock.shapes import parse_body
from tuneforge.api.deps import get_manager
from tuneforge.catalog.custom import CustomModelFilter
from tuneforge.console.billing import BILLING_STATUSES
from tuneforge.console.pages import ApiError, CsrfChecked, ServicesDep, partial, render, see_other
from tuneforge.errors import ServiceError
from tuneforge.services import Services
from tuneforge.serving.deployments import BUDGET_TAG, DeploymentFilter
from tuneforge.serving.manager import EngineManager, pt_group
from tuneforge.serving.throughput import (
    COMMITMENT_MONTHS,
    IDLE_TIMEOUT_TAG,
    CreateThroughputRequest,
    ThroughputFilter,
    idle_timeout_seconds,
)
from tuneforge.serving.usage import meters

router = APIRouter()
ManagerDep = Annotated[EngineManager, Depends(get_manager)]
LIST_LIMIT = 1000
HOURS_PER_DAY = 24
CREATE_THROUGHPUT = "CreateProvisionedModelThroughput"
CREATE_DEPLOYMENT = "CreateCustomModelDeployment"


def _model_choices(services: Services, *, foundation: bool) -> list[dict[str, str]]:
    """Models a deployment can serve: Active custom models, and (for provisioned throughput) the
    foundation models that support it. Each with the on-demand token price of its base."""
    choices = []
    if foundation:
        for model in services.catalog.all():
            if "PROVISIONED" in model.inference_types:
                choices.append(
                    {"value": model.model_id, "label": f"{model.name} ({model.model_id})", "base": model.model_id}
                )
    page = services.custom_models.list_models(CustomModelFilter(model_status="Active"), None, LIST_LIMIT)
    for custom in page.items:
        choices.append(
            {
                "value": custom.arn,
                "label": f"{custom.name} (custom, from {custom.base_model_id})",
                "base": custom.base_model_id,
            }
        )
    for choice in choices:
        price = services.settings.token_price(choice["base"])
        choice["tokens"] = f"${price.input:g} / ${price.output:g} per 1,000 input / output tokens"
    return choices


def _tags(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"key": key, "value": value} for key, value in pairs if key or value]


# -- provisioned throughput ------------------------------------------------------------------------


def _throughput_rows(services: Services, manager: EngineManager) -> list[dict[str, Any]]:
    services.meter.flush()
    page = services.throughput.list_throughputs(ThroughputFilter(), None, LIST_LIMIT)
    with services.db.session() as session:
        found = meters(session, [row.id for row in page.items])
    return [
        serving_schemas.throughput_summary(row, found[row.id], manager.replica_states(pt_group(row.id)))
        for row in page.items
    ]


def _throughput(services: Services, manager: EngineManager, name: str) -> dict[str, Any]:
    row = services.throughput.get(name)
    services.meter.flush()
    with services.db.session() as session:
        meter = meters(session, [row.id])[row.id]
    return serving_schemas.throughput_details(row, meter, manager.replica_states(pt_group(row.id)))


@router.get("/console/throughput", response_class=HTMLResponse, include_in_schema=False)
async def throughput_list(request: Request, services: ServicesDep, manager: ManagerDep) -> Response:
    rows = await run_in_threadpool(_throughput_rows, services, manager)
    return render(request, "throughput_list.html", rows=rows)


@router.get("/console/throughput/new", response_class=HTMLResponse, include_in_schema=False)
async def throughput_form(
    request: Request, services: ServicesDep, model: Annotated[str | None, Query()] = None
) -> Response:
    choices = await run_in_threadpool(_model_choices, services, foundation=True)
    return _throughput_form(request, services, choices, {"modelId": model or "", "modelUnits": "1"}, None)


def _throughput_form(
    request: Request,
    services: Services,
    choices: list[dict[str, str]],
    values: dict[str, str],
    error: ApiError | None,
    status_code: int = 200,
) -> Response:
    return render(
        request,
        "throughput_new.html",
        status_code=status_code,
        choices=choices,
        values=values,
        error=error,
        commitments=tuple(COMMITMENT_MONTHS),
        price=services.settings.price_per_model_unit_hour,
        default_idle=services.settings.idle_timeout_minutes,
        idle_tag=IDLE_TIMEOUT_TAG,
    )


def _parse_throughput(services: Services, raw: bytes) -> CreateThroughputRequest:
    """The API's own parsing and the service's own pre-create checks, so the review page only ever
    prices a request the server would accept."""
    parsed = serving_schemas.parse_create_throughput(parse_body(raw, CREATE_THROUGHPUT))
    services.throughput.check(parsed)
    return parsed


def _review(
    request: Request,
    services: Services,
    raw: bytes,
    parsed: CreateThroughputRequest,
    error: ApiError | None,
    status_code: int = 200,
) -> Response:
    settings = services.settings
    idle = None if parsed.commitment_duration else idle_timeout_seconds(parsed.tags, settings.idle_timeout_minutes)
    hourly = parsed.model_units * settings.price_per_model_unit_hour
    return render(
        request,
        "throughput_confirm.html",
        status_code=status_code,
        error=error,
        request_json=raw.decode(),
        body=json.loads(raw),
        parsed=parsed,
        unit_price=settings.price_per_model_unit_hour,
        hourly=hourly,
        daily=hourly * HOURS_PER_DAY,
        months=COMMITMENT_MONTHS.get(parsed.commitment_duration or ""),
        idle_minutes=None if idle is None else idle / 60,
    )


def _whole_number(text: str) -> int | str:
    """The form's digits as the JSON integer the API expects; anything else is sent as typed, for the
    API's parser to refuse (``str.isdigit`` also passes "²", and ``int`` refuses 4,301 digits: a 500)."""
    stripped = text.strip()
    return int(stripped) if re.fullmatch(r"[0-9]{1,18}", stripped) else text


@router.post(
    "/console/throughput/review", response_class=HTMLResponse, include_in_schema=False, dependencies=[CsrfChecked]
)
async def throughput_review(
    request: Request,
    services: ServicesDep,
    name: Annotated[str, Form()] = "",
    model: Annotated[str, Form()] = "",
    units: Annotated[str, Form()] = "",
    commitment: Annotated[str, Form()] = "",
    idle_minutes: Annotated[str, Form()] = "",
    tag_key: Annotated[str, Form()] = "",
    tag_value: Annotated[str, Form()] = "",
) -> Response:
    """Step one: the form becomes the exact CreateProvisionedModelThroughput body, checked and priced."""
    body: dict[str, Any] = {
        "provisionedModelName": name,
        "modelId": model,
        "modelUnits": _whole_number(units),
        "clientRequestToken": str(uuid.uuid4()),
    }
    if commitment:
        body["commitmentDuration"] = commitment
    tags = _tags([(tag_key, tag_value)] + ([(IDLE_TIMEOUT_TAG, idle_minutes.strip())] if idle_minutes.strip() else []))
    if tags:
        body["tags"] = tags
    raw = json.dumps(body).encode()
    try:
        parsed = await run_in_threadpool(_parse_throughput, services, raw)
    except ServiceError as exc:
        choices = await run_in_threadpool(_model_choices, services, foundation=True)
        values = {
            "name": name,
            "modelId": model,
            "modelUnits": units,
            "commitment": commitment,
            "idle": idle_minutes,
            "tagKey": tag_key,
            "tagValue": tag_value,
        }
        return _throughput_form(request, services, choices, values, ApiError.of(exc), exc.status)
    return _review(request, services, raw, parsed, None)


@router.post("/console/throughput", response_class=HTMLResponse, include_in_schema=False, dependencies=[CsrfChecked])
async def throughput_create(
    request: Request,
    services: ServicesDep,
    body: Annotated[str, Form(alias="request")],
    confirm: Annotated[str, Form()] = "",
) -> Response:
    """Step two: only with the confirmation ticked; the reviewed body goes to the service as it was shown."""
    raw = body.encode()
    try:
        parsed = await run_in_threadpool(_parse_throughput, services, raw)
    except ServiceError as exc:
        return render(request, "error.html", status_code=exc.status, error=ApiError.of(exc))
    if confirm != "yes":
        refusal = ApiError("ValidationException", "Confirm the cost (tick the box) to buy this provisioned throughput.")
        return _review(request, services, raw, parsed, refusal, 400)
    try:
        row = await run_in_threadpool(services.throughput.create, parsed)
    except ServiceError as exc:
        return _review(request, services, raw, parsed, ApiError.of(exc), exc.status)
    return see_other(f"/console/throughput/{row.name}")


@router.get("/console/throughput/{name}", response_class=HTMLResponse, include_in_schema=False)
async def throughput_detail(request: Request, name: str, services: ServicesDep, manager: ManagerDep) -> Response:
    try:
        api = await run_in_threadpool(_throughput, services, manager, name)
    except ServiceError as exc:
        return render(request, "error.html", status_code=exc.status, error=ApiError.of(exc))
    return render(request, "throughput.html", api=api, name=name, error=None, live=api["status"] in BILLING_STATUSES)


@router.get("/console/throughput/{name}/status", response_class=HTMLResponse, include_in_schema=False)
async def throughput_status(request: Request, name: str, services: ServicesDep, manager: ManagerDep) -> Response:
    """The status, replicas and meter, refreshed while the throughput bills; stops once it no longer does."""
    try:
        api = await run_in_threadpool(_throughput, services, manager, name)
    except ServiceError as exc:
        return partial(request, "throughput_status.html", headers={"X-Refresh-Stop": "1"}, error=ApiError.of(exc))
    stop = None if api["status"] in BILLING_STATUSES else {"X-Refresh-Stop": "1"}
    return partial(request, "throughput_status.html", headers=stop, api=api, error=None)


@router.post(
    "/console/throughput/{name}/delete",
    response_class=HTMLResponse,
    include_in_schema=False,
    dependencies=[CsrfChecked],
)
async def throughput_delete(request: Request, name: str, services: ServicesDep, manager: ManagerDep) -> Response:
    try:
        await run_in_threadpool(services.throughput.delete, name)
    except ServiceError as exc:
        try:
            api = await run_in_threadpool(_throughput, services, manager, name)
        except ServiceError:
            return render(request, "error.html", status_code=exc.status, error=ApiError.of(exc))
        return render(
            request,
            "throughput.html",
            status_code=exc.status,
            api=api,
            name=name,
            error=ApiError.of(exc),
            live=api["status"] in BILLING_STATUSES,
        )
    return see_other("/console/throughput")


# -- custom model deployments ----------------------------------------------------------------------


def _deployment(services: Services, name: str) -> dict[str, Any]:
    row = services.deployments.get(name)
    services.meter.flush()
    return deployment_schemas.deployment_details(row, services.deployments.extension(row))


def _deployment_rows(services: Services) -> list[dict[str, Any]]:
    services.meter.flush()
    page = services.deployments.list_deployments(DeploymentFilter(), None, LIST_LIMIT)
    return [deployment_schemas.deployment_details(row, services.deployments.extension(row)) for row in page.items]


@router.get("/console/deployments", response_class=HTMLResponse, include_in_schema=False)
async def deployment_list(request: Request, services: ServicesDep) -> Response:
    rows = await run_in_threadpool(_deployment_rows, services)
    return render(request, "deployment_list.html", rows=rows)


def _deployment_form(
    request: Request,
    choices: list[dict[str, str]],
    values: dict[str, str],
    error: ApiError | None,
    status_code: int = 200,
) -> Response:
    return render(
        request,
        "deployment_new.html",
        status_code=status_code,
        choices=choices,
        values=values,
        error=error,
        budget_tag=BUDGET_TAG,
    )


@router.get("/console/deployments/new", response_class=HTMLResponse, include_in_schema=False)
async def deployment_form(
    request: Request, services: ServicesDep, model: Annotated[str | None, Query()] = None
) -> Response:
    choices = await run_in_threadpool(_model_choices, services, foundation=False)
    return _deployment_form(request, choices, {"modelArn": model or ""}, None)


@router.post("/console/deployments", response_class=HTMLResponse, include_in_schema=False, dependencies=[CsrfChecked])
async def deployment_create(
    request: Request,
    services: ServicesDep,
    name: Annotated[str, Form()] = "",
    model: Annotated[str, Form()] = "",
    description: Annotated[str, Form()] = "",
    budget: Annotated[str, Form()] = "",
) -> Response:
    """CreateCustomModelDeployment through the API's parsing; tokens bill only when it is invoked."""
    body: dict[str, Any] = {"modelDeploymentName": name, "modelArn": model, "clientRequestToken": str(uuid.uuid4())}
    if description:
        body["description"] = description
    if budget.strip():
        body["tags"] = [{"key": BUDGET_TAG, "value": budget.strip()}]
    try:
        parsed = deployment_schemas.parse_create_deployment(parse_body(json.dumps(body).encode(), CREATE_DEPLOYMENT))
        row = await run_in_threadpool(services.deployments.create, parsed)
    except ServiceError as exc:
        choices = await run_in_threadpool(_model_choices, services, foundation=False)
        values = {"name": name, "modelArn": model, "description": description, "budget": budget}
        return _deployment_form(request, choices, values, ApiError.of(exc), exc.status)
    return see_other(f"/console/deployments/{row.name}")


@router.get("/console/deployments/{name}", response_class=HTMLResponse, include_in_schema=False)
async def deployment_detail(request: Request, name: str, services: ServicesDep) -> Response:
    try:
        api = await run_in_threadpool(_deployment, services, name)
    except ServiceError as exc:
        return render(request, "error.html", status_code=exc.status, error=ApiError.of(exc))
    return render(request, "deployment.html", api=api, name=name, error=None)


@router.get("/console/deployments/{name}/status", response_class=HTMLResponse, include_in_schema=False)
async def deployment_status(request: Request, name: str, services: ServicesDep) -> Response:
    try:
        api = await run_in_threadpool(_deployment, services, name)
    except ServiceError as exc:
        return partial(request, "deployment_status.html", headers={"X-Refresh-Stop": "1"}, error=ApiError.of(exc))
    stop = None if api["status"] == "Creating" else {"X-Refresh-Stop": "1"}
    return partial(request, "deployment_status.html", headers=stop, api=api, error=None)


@router.post(
    "/console/deployments/{name}/delete",
    response_class=HTMLResponse,
    include_in_schema=False,
    dependencies=[CsrfChecked],
)
async def deployment_delete(request: Request, name: str, services: ServicesDep) -> Response:
    try:
        await run_in_threadpool(services.deployments.delete, name)
    except ServiceError as exc:
        try:
            api = await run_in_threadpool(_deployment, services, name)
        except ServiceError:
            return render(request, "error.html", status_code=exc.status, error=ApiError.of(exc))
        return render(request, "deployment.html", status_code=exc.status, api=api, name=name, error=ApiError.of(exc))
    return see_other("/console/deployments")
