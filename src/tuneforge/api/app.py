"""The ASGI application: Bedrock control plane today, runtime and OpenAI routes beside it later.

The API process never imports torch: training runs in worker processes started by the
:class:`~tuneforge.jobs.supervisor.Supervisor`, which this app runs in a background thread.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneforge import __version__
from tuneforge.api.auth import verify_request
from tuneforge.api.bedrock.routes import router as bedrock_router
from tuneforge.errors import ServiceError
from tuneforge.jobs.supervisor import Supervisor
from tuneforge.services import Services
from tuneforge.settings import Settings

ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"


def aws_error(code: str, status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"message": message},
        status_code=status,
        headers={"x-amzn-ErrorType": f"{code}:{ERROR_NAMESPACE}"},
    )


def create_app(settings: Settings | None = None, *, run_supervisor: bool = True) -> FastAPI:
    settings = settings or Settings()
    services = Services.create(settings)
    supervisor = Supervisor(services) if run_supervisor else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if supervisor is not None:
            supervisor.start()
        try:
            yield
        finally:
            if supervisor is not None:
                supervisor.shutdown()
            services.close()

    app = FastAPI(title="tuneforge", version=__version__, lifespan=lifespan)
    app.state.services = services
    app.state.supervisor = supervisor

    @app.middleware("http")
    async def _authenticate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path == "/healthz":
            return await call_next(request)
        raw_path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
        query = request.scope.get("query_string", b"").decode("latin-1")
        host = request.headers.get("host", f"{settings.host}:{settings.port}")
        try:
            verify_request(
                settings,
                method=request.method,
                url=f"http://{host}{raw_path}" + (f"?{query}" if query else ""),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=await request.body(),
            )
        except ServiceError as exc:
            return aws_error(exc.code, exc.status, exc.message)
        return await call_next(request)

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return aws_error(exc.code, exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:])
        return aws_error("ValidationException", 400, f"Invalid value at '{where}': {first.get('msg', '')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return aws_error("UnknownOperationException", 404, "Unknown operation")
        if exc.status_code == 405:
            return aws_error("UnknownOperationException", 405, "Method not allowed for this operation")
        return aws_error("InternalServerException", exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, _exc: Exception) -> JSONResponse:
        return aws_error(
            "InternalServerException",
            500,
            "Encountered an unexpected error when processing the request, please try again",
        )

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    app.include_router(bedrock_router)
    return app
