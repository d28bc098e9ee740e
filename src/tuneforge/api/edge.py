"""The HTTP edge: one pure ASGI middleware that every request passes before a route runs.

It decides the request's *surface* first, because that decides both the credential and the error
format. A SigV4-signed request is a Bedrock request whatever its path (Bedrock has operations under
``/v1/...`` too, such as the data-retention ones); an unsigned ``/v1/...`` request is OpenAI;
``/metrics`` takes either credential; ``/healthz`` is open; ``/console/...`` is the web console
(a signed session cookie, :mod:`tuneforge.console.session`); everything else is Bedrock.

Then, cheapest first, so that nothing a browser page or a hostile client sends costs real work:

1. a foreign ``Origin`` is refused (a page in the user's browser can POST to the loopback server
   without a preflight; same-origin and ``allowed_origins`` pass);
2. a body whose ``Content-Type`` is not JSON is refused (``text/plain`` is what such a page sends;
   no header at all is allowed, because boto3's InvokeModel sends none unless told);
3. the body is read up to the route's cap and refused with 413 past it (``Content-Length`` is
   honoured before reading anything); the body read here is replayed to the route;
4. the credential is verified (:mod:`tuneforge.api.auth`) against that body.

It also answers unexpected errors itself. Starlette's ``ServerErrorMiddleware`` re-raises after
sending its 500, and uvicorn then closes the connection, which reset the client's next request on a
keep-alive connection; answering here and returning normally keeps the connection usable.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuneforge.api.auth import is_sigv4, verify_bearer, verify_request
from tuneforge.api.openai.protocol import error_body
from tuneforge.console.session import COOKIE, ConsoleSessions
from tuneforge.errors import ServiceError
from tuneforge.replicas import SECRET_HEADER, ReplicaRegistry
from tuneforge.settings import Settings, is_loopback

log = logging.getLogger(__name__)

BEDROCK, OPENAI, METRICS, HEALTH, CONSOLE = "bedrock", "openai", "metrics", "health", "console"
INTERNAL = "internal"
INTERNAL_PREFIX = "/internal/replica/"
"""Replica-to-replica calls (forwarded inference): only with the replica credential, nothing else."""
CONSOLE_PUBLIC = ("/console/login", "/console/static/")
"""What the console shows before sign-in: the sign-in form and the stylesheet and script it uses."""
CONSOLE_OWN_BODY = ("/console/jobs/new/upload",)
"""The console route that reads its body itself: the data upload, streamed to the store under its own cap."""
OPENAI_OWN_BODY = ("/v1/files",)
"""The OpenAI route that reads its body itself: the multipart file upload, streamed to the store under
its own cap (``TUNEFORGE_MAX_TRAINING_FILE_BYTES``). Origin, credential and host are checked as for
every ``/v1`` request; the body is neither read here nor required to be JSON."""
CONSOLE_INFERENCE = "/console/playground/converse-stream"
"""The playground's ConverseStream body, capped like the API's inference bodies."""
ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"
UNEXPECTED = "Encountered an unexpected error when processing the request, please try again"
JSON_MEDIA_TYPES = {"application/json", "application/x-amz-json-1.0", "application/x-amz-json-1.1"}
BODY_METHODS = {"POST", "PUT", "PATCH"}


def aws_error(code: str, status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"message": message},
        status_code=status,
        headers={"x-amzn-ErrorType": f"{code}:{ERROR_NAMESPACE}"},
    )


def is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def classify(path: str, authorization: str | None) -> str:
    if path == "/healthz":
        return HEALTH
    if path.startswith(INTERNAL_PREFIX):
        return INTERNAL
    if path == "/metrics":
        return METRICS
    if path == "/console" or path.startswith("/console/"):
        return CONSOLE
    if is_sigv4(authorization):
        return BEDROCK
    return OPENAI if is_openai_path(path) else BEDROCK


def surface_of(scope: Scope) -> str:
    """The surface the edge decided (the path's, for a scope that never passed the edge)."""
    state: dict[str, Any] = scope.get("state", {})
    surface = state.get("surface")
    if isinstance(surface, str):
        return surface
    return classify(scope["path"], None)


def refusal(surface: str, status: int, aws_code: str, message: str, openai_code: str | None = None) -> Response:
    """One error in the surface's own format: AWS's, OpenAI's, or plain text for metrics and probes."""
    if surface == BEDROCK:
        return aws_error(aws_code, status, message)
    if surface == OPENAI:
        return JSONResponse(error_body(message, "invalid_request_error", openai_code), status_code=status)
    if surface == CONSOLE:
        return PlainTextResponse(f"{message}\n", status_code=status)
    headers = {"WWW-Authenticate": 'Bearer realm="tuneforge"'} if status == 401 else None
    return PlainTextResponse(f"{message}\n", status_code=status, headers=headers)


def _host_port(netloc: str, default_port: int) -> tuple[str, int] | None:
    try:
        parts = urlsplit(f"//{netloc}")
        return (parts.hostname or "").lower(), parts.port or default_port
    except ValueError:
        return None


class Edge:
    """Pure ASGI middleware (see the module docstring for what it checks, and in which order)."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        console: ConsoleSessions | None = None,
        replicas: ReplicaRegistry | None = None,
    ) -> None:
        self.app = app
        self.replicas = replicas
        self.settings = settings
        self.allowed_origins = {o.rstrip("/").lower() for o in settings.allowed_origins}
        self.console = console or ConsoleSessions.from_settings(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        surface = classify(scope["path"], headers.get("authorization"))
        request_id = str(uuid.uuid4())
        state = scope.setdefault("state", {})
        state.update(surface=surface, request_id=request_id, identity="anonymous")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-amzn-requestid", request_id.encode())]
            await send(message)

        if surface == INTERNAL:
            if not self.replica_caller(headers):
                await refusal(surface, 403, "AccessDeniedException", "Replica credential missing or wrong")(
                    scope, receive, send_with_id
                )
                return
            body = await self.read_body(surface, scope["path"], headers, receive)
            if isinstance(body, Response):
                await body(scope, receive, send_with_id)
                return
            await self.call_app(surface, scope, replay(body, receive), send_with_id)
            return
        if surface == CONSOLE:
            refused = (
                (self.check_host(surface, headers) if self.console.open else None)
                or self.check_origin(surface, headers)
                or self.console_session(scope, headers, state)
            )
            if refused is not None:
                await refused(scope, receive, send_with_id)
                return
            if scope["path"] in CONSOLE_OWN_BODY:
                await self.call_app(surface, scope, receive, send_with_id)
                return
            # Every other console form is read here under the control plane's cap: a multipart body
            # with a file part would otherwise be spooled to disk whole by the form parser.
            body = await self.read_body(surface, scope["path"], headers, receive)
            if isinstance(body, Response):
                await body(scope, receive, send_with_id)
                return
            await self.call_app(surface, scope, replay(body, receive), send_with_id)
            return
        if surface == OPENAI and scope["method"] == "POST" and scope["path"] in OPENAI_OWN_BODY:
            refused = self.check_origin(surface, headers) or self.authenticate(surface, scope, headers, b"", state)
            if refused is None and state["identity"] == "anonymous":
                refused = self.check_host(surface, headers)
            if refused is not None:
                await refused(scope, receive, send_with_id)
                return
            await self.call_app(surface, scope, receive, send_with_id)
            return
        outcome = await self.screen(surface, scope, headers, receive, state)
        if isinstance(outcome, Response):
            await outcome(scope, receive, send_with_id)
            return
        await self.call_app(surface, scope, replay(outcome, receive), send_with_id)

    def replica_caller(self, headers: dict[str, str]) -> bool:
        """Whether the request carries this replica's credential (constant-time; none without a registry)."""
        if self.replicas is None:
            return False
        presented = headers.get(SECRET_HEADER, "").encode("utf-8")
        return bool(presented) and hmac.compare_digest(presented, self.replicas.credential.encode("utf-8"))

    async def screen(
        self, surface: str, scope: Scope, headers: dict[str, str], receive: Receive, state: dict[str, Any]
    ) -> bytes | Response:
        """The request's body, or the refusal to answer instead, after every check in order."""
        refused = self.check_origin(surface, headers) or self.check_content_type(surface, scope["method"], headers)
        if refused is not None:
            return refused
        body = await self.read_body(surface, scope["path"], headers, receive)
        if isinstance(body, Response):
            return body
        refused = self.authenticate(surface, scope, headers, body, state)
        if refused is None and surface != HEALTH and state["identity"] == "anonymous":
            refused = self.check_host(surface, headers)
        if refused is not None:
            return refused
        if surface == BEDROCK and is_openai_path(scope["path"]):
            return aws_error("UnknownOperationException", 404, "Unknown operation")
        return body

    async def call_app(self, surface: str, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unexpected error in %s %s", scope["method"], scope["path"])
            if started:
                raise
            response: Response
            if surface == OPENAI:
                response = JSONResponse(error_body(UNEXPECTED, "server_error"), status_code=500)
            elif surface == CONSOLE:
                response = PlainTextResponse(f"{UNEXPECTED}\n", status_code=500)
            else:
                response = aws_error("InternalServerException", 500, UNEXPECTED)
            await response(scope, receive, send)

    def console_session(self, scope: Scope, headers: dict[str, str], state: dict[str, Any]) -> Response | None:
        """The console's session cookie: signed in, or open on an anonymous loopback server; else sign in."""
        cookies = SimpleCookie()
        try:
            cookies.load(headers.get("cookie", ""))
        except CookieError:
            cookies = SimpleCookie()
        morsel = cookies.get(COOKIE)
        session = self.console.read(morsel.value if morsel else None)
        state["console_session"] = session
        if session is not None and session.identity != "anonymous":
            state["identity"] = f"arn:aws:iam::{self.settings.account_id}:user/{session.identity}"
        path = scope["path"]
        if session is not None or self.console.open or path.startswith(CONSOLE_PUBLIC):
            return None
        if scope["method"] == "GET":
            query = scope.get("query_string", b"").decode("latin-1")
            target = path + (f"?{query}" if query else "")
            return RedirectResponse(f"/console/login?{urlencode({'next': target})}", status_code=303)
        return PlainTextResponse("Sign in to the console first.\n", status_code=401)

    def check_host(self, surface: str, headers: dict[str, str]) -> Response | None:
        """What is served without a credential answers only to a loopback name: else DNS rebinding.

        A page on another site whose name the attacker re-points at 127.0.0.1 is same-origin to the
        browser, sends no Origin on a GET, and would read every console page, download, job and
        model list of an anonymous loopback server. Signed requests need no such check: the page has
        no key to sign with.
        """
        host = _host_port(headers.get("host", ""), 80)
        if host is not None and is_loopback(host[0]):
            return None
        message = (
            "An anonymous loopback server answers only to a loopback host name (localhost, 127.0.0.1, [::1]); "
            "to serve other names, configure access keys and sign requests"
        )
        if surface == CONSOLE:
            message = f"AccessDeniedException: {message}"
        return refusal(surface, 403, "AccessDeniedException", message, "forbidden_host")

    def check_origin(self, surface: str, headers: dict[str, str]) -> Response | None:
        origin = headers.get("origin")
        if origin is None or origin.rstrip("/").lower() in self.allowed_origins:
            return None
        parts = urlsplit(origin) if "://" in origin else None
        if parts is not None and parts.scheme in ("http", "https"):
            theirs = _host_port(parts.netloc, 443 if parts.scheme == "https" else 80)
            ours = _host_port(headers.get("host", ""), 80)
            rebound = self.settings.binds_loopback and theirs is not None and not is_loopback(theirs[0])
            if theirs is not None and theirs == ours and not rebound:
                return None
        return refusal(
            surface,
            403,
            "AccessDeniedException",
            f"Cross-origin requests are not allowed: origin {origin!r} is not this server's own "
            "(add it to TUNEFORGE_ALLOWED_ORIGINS to allow it)",
            "forbidden_origin",
        )

    def check_content_type(self, surface: str, method: str, headers: dict[str, str]) -> Response | None:
        content_type = headers.get("content-type")
        if method not in BODY_METHODS or content_type is None:
            return None
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type in JSON_MEDIA_TYPES or (media_type.startswith("application/") and media_type.endswith("+json")):
            return None
        return refusal(
            surface,
            400,
            "ValidationException",
            f"Unsupported Content-Type {content_type!r}: the request body must be JSON (application/json)",
            "unsupported_content_type",
        )

    def body_cap(self, surface: str, path: str) -> tuple[int, str]:
        """The route's body cap and the setting that sets it: inference routes get the larger one."""
        if surface in (OPENAI, INTERNAL) or path.startswith("/model/") or path == CONSOLE_INFERENCE:
            return self.settings.max_inference_body_bytes, "TUNEFORGE_MAX_INFERENCE_BODY_BYTES"
        return self.settings.max_request_body_bytes, "TUNEFORGE_MAX_REQUEST_BODY_BYTES"

    async def read_body(self, surface: str, path: str, headers: dict[str, str], receive: Receive) -> bytes | Response:
        """Read the whole body, never more than the cap; uvicorn discards what is left unread."""
        cap, setting = self.body_cap(surface, path)
        too_large = refusal(
            surface,
            413,
            "ValidationException",
            f"The request body is larger than this operation's limit of {cap} bytes (set by {setting})",
            "request_too_large",
        )
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            return too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                return too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def authenticate(
        self, surface: str, scope: Scope, headers: dict[str, str], body: bytes, state: dict[str, Any]
    ) -> Response | None:
        if surface == HEALTH:
            return None
        authorization = headers.get("authorization")
        try:
            if surface == OPENAI or (surface == METRICS and not is_sigv4(authorization)):
                label = verify_bearer(self.settings, authorization)
                state["identity"] = label or "anonymous"
                return None
            raw_path = scope.get("raw_path") or scope["path"].encode()
            query = scope.get("query_string", b"").decode("latin-1")
            host = headers.get("host", f"{self.settings.host}:{self.settings.port}")
            key_id = verify_request(
                self.settings,
                method=scope["method"],
                url=f"http://{host}{raw_path.decode('latin-1')}" + (f"?{query}" if query else ""),
                headers=headers,
                body=body,
            )
        except ServiceError as exc:
            status = exc.status if surface == BEDROCK else 401
            return refusal(surface, status, exc.code, exc.message, "invalid_api_key")
        if key_id is not None:
            state["identity"] = f"arn:aws:iam::{self.settings.account_id}:user/{key_id}"
        return None


def replay(body: bytes, receive: Receive) -> Receive:
    """Hand the route the body already read, then the server's own messages (disconnects)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
