"""Sign-in, sign-out and the catalog: foundation, imported and registered models."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response

from tuneforge.api.bedrock import schemas
from tuneforge.catalog.models import CUSTOMIZATION_TYPES, FoundationModel
from tuneforge.console.billing import billing_now
from tuneforge.console.pages import ApiError, CsrfChecked, ServicesDep, partial, render, see_other, sessions
from tuneforge.console.session import COOKIE
from tuneforge.errors import ServiceError

router = APIRouter()

URL_SAFE = "/:?#[]@!$&'()*+,;=%"
"""What a ``next`` URL keeps as it is: its delimiters and escapes already made (RFC 3986 reserved, and %)."""


def _safe_next(target: str | None) -> str:
    """Only a console path: a sign-in form must not send the browser elsewhere.

    Returned percent-encoded: a Location header carries only latin-1 and no line breaks, so a raw
    ``next`` with a non-ASCII character or a CR/LF would fail the response (a 500).
    """
    if not target:
        return "/console/catalog"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/console") or target.startswith("//"):
        return "/console/catalog"
    return quote(target, safe=URL_SAFE)


@router.get("/console", include_in_schema=False)
@router.get("/console/", include_in_schema=False)
def index() -> Response:
    return see_other("/console/catalog")


@router.get("/console/login", response_class=HTMLResponse, include_in_schema=False)
def login_form(request: Request, next: Annotated[str | None, Query()] = None) -> Response:
    if sessions(request).open:
        return see_other(_safe_next(next))
    return render(request, "login.html", next=_safe_next(next), error=None)


@router.post("/console/login", response_class=HTMLResponse, include_in_schema=False)
def login(
    request: Request,
    access_key_id: Annotated[str, Form()],
    secret_access_key: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/console/catalog",
) -> Response:
    console = sessions(request)
    try:
        session = console.sign_in(access_key_id, secret_access_key)
    except ServiceError as exc:
        return render(request, "login.html", status_code=exc.status, next=_safe_next(next), error=ApiError.of(exc))
    response = see_other(_safe_next(next))
    console.set_cookie(request, response, session)
    return response


@router.post("/console/logout", include_in_schema=False, dependencies=[CsrfChecked])
def logout() -> Response:
    response = see_other("/console/login")
    response.delete_cookie(COOKIE, path="/console")
    return response


@router.get("/console/billing", response_class=HTMLResponse, include_in_schema=False)
def billing(request: Request, services: ServicesDep) -> Response:
    """The banner's content, refreshed on every page: what is billing now."""
    now = billing_now(services)
    return partial(request, "_billing.html", headers=None if now else {"X-Billing-Clear": "1"}, billing=now)


def _source(model: FoundationModel) -> str:
    if model.builtin:
        return "Built-in"
    return "Imported" if model.arn else "Registered"


@router.get("/console/catalog", response_class=HTMLResponse, include_in_schema=False)
def catalog(
    request: Request,
    services: ServicesDep,
    customization: Annotated[str | None, Query()] = None,
    provider: Annotated[str | None, Query()] = None,
    source: Annotated[str | None, Query()] = None,
    q: Annotated[str | None, Query()] = None,
) -> Response:
    everything = services.catalog.all()
    models = [
        m
        for m in everything
        if (not customization or customization in m.customizations)
        and (not provider or m.provider == provider)
        and (not source or _source(m) == source)
        and (not q or q.lower() in f"{m.model_id} {m.name} {m.family}".lower())
    ]
    return render(
        request,
        "catalog.html",
        models=models,
        source_of=_source,
        providers=sorted({m.provider for m in everything}),
        customization_types=CUSTOMIZATION_TYPES,
        sources=("Built-in", "Imported", "Registered"),
        chosen={"customization": customization, "provider": provider, "source": source, "q": q or ""},
    )


@router.get("/console/catalog/{model_id:path}", response_class=HTMLResponse, include_in_schema=False)
def model_detail(request: Request, model_id: str, services: ServicesDep) -> Response:
    try:
        model = services.catalog.get(model_id)
    except ServiceError as exc:
        return render(request, "error.html", status_code=exc.status, error=ApiError.of(exc))
    return render(
        request,
        "model.html",
        model=model,
        source=_source(model),
        api=schemas.foundation_model(model, services.arns),
        arn=services.catalog.arn(model),
    )
