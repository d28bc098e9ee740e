"""What every console page shares: templates, the session and CSRF, the billing banner, API errors.

Pages are rendered on the server from Jinja2 templates with autoescaping on (every value a page
shows, job names, tags, data previews, model output, is escaped); a little plain JavaScript
(``static/console.js``) refreshes marked parts of a page and streams the playground. Nothing is
built at install or run time.

The console invents no business rules of its own: its handlers read the same services and the
same response shapes as the Bedrock routes (``api.bedrock.schemas``), send what they create
through the same request parsers (``api.bedrock.shapes.parse_body``), and show a refusal as the
API's own ``ErrorCode: message``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from tuneforge.api.deps import get_services
from tuneforge.console.billing import billing_now
from tuneforge.console.session import ANONYMOUS, CSRF_FIELD, CSRF_HEADER, ConsoleSessions, Session
from tuneforge.errors import ServiceError
from tuneforge.services import Services

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
ServicesDep = Annotated[Services, Depends(get_services)]


@dataclass(frozen=True)
class ApiError:
    """A refusal as the API words it: the AWS error code and its message."""

    code: str
    message: str

    @classmethod
    def of(cls, exc: ServiceError) -> ApiError:
        return cls(exc.code, exc.message)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def sessions(request: Request) -> ConsoleSessions:
    console: ConsoleSessions = request.app.state.console_sessions
    return console


def current_session(request: Request) -> Session | None:
    session: Session | None = request.scope.get("state", {}).get("console_session")
    return session


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page: the template with the session's CSRF token, the navigation and the billing banner.

    An open (loopback, anonymous) console hands a first-time browser its cookie here, so that its
    forms carry a CSRF token from the first page on.
    """
    console = sessions(request)
    session = current_session(request)
    fresh = session is None and console.open
    if session is None and console.open:
        session = console.issue(ANONYMOUS)
    services: Services = request.app.state.services
    response = templates.TemplateResponse(
        request,
        template,
        {
            "csrf_field": CSRF_FIELD,
            "csrf_token": console.csrf_token(session) if session else "",
            "identity": session.identity if session else None,
            "signed_in": session is not None and session.identity != ANONYMOUS,
            "billing": billing_now(services) if session else [],
            **context,
        },
        status_code=status_code,
    )
    if fresh and session is not None:
        console.set_cookie(request, response, session)
    return response


def partial(request: Request, template: str, headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
    """A fragment a page refreshes in place (``data-refresh``): no layout, no banner."""
    return templates.TemplateResponse(request, template, context, headers=headers)


async def require_csrf(request: Request) -> None:
    """Every state-changing console request: the session's CSRF token, as a form field or header."""
    token = request.headers.get(CSRF_HEADER)
    if token is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        token = value if isinstance(value, str) else None
    if not sessions(request).check_csrf(current_session(request), token):
        raise HTTPException(403, "The form's CSRF token is missing or stale: reload the page and try again.")


CsrfChecked = Depends(require_csrf)


def see_other(url: str) -> Response:
    return Response(status_code=303, headers={"location": url})
