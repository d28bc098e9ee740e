"""The ASGI application: the Bedrock control plane and runtime, and the OpenAI-compatible routes.

The API process never imports torch: training runs in worker processes started by the
:class:`~tuneforge.jobs.supervisor.Supervisor`, and models are served by engine processes started
by the :class:`~tuneforge.serving.manager.EngineManager`; both run here as background threads.

Every request first passes :class:`~tuneforge.api.edge.Edge`, which decides its surface and
checks it: a SigV4-signed request, or an unsigned one outside ``/v1/...``, is Bedrock (SigV4 under
the signing name ``bedrock``, AWS-style errors); an unsigned ``/v1/...`` request is OpenAI (bearer
API keys, OpenAI's error envelope); ``/metrics`` takes either credential (Prometheus can send a
bearer key, not a SigV4 signature) and answers a plain 401; ``/healthz`` is open (it says only that
the server is up, and probes cannot sign); ``/internal/replica/...`` takes only the replica credential
(inference forwarded by another replica). The handlers below answer in the surface it decided.

A server that runs the supervisor or the engines registers itself as a replica
(:class:`~tuneforge.replicas.ReplicaRegistry`) so several of them can share one database.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneforge import __version__
from tuneforge.api.agent.routes import router as agent_router
from tuneforge.api.bedrock.advisor_routes import router as advisor_router
from tuneforge.api.bedrock.deployment_routes import router as deployment_router
from tuneforge.api.bedrock.evaluation_routes import router as evaluation_router
from tuneforge.api.bedrock.import_routes import router as import_router
from tuneforge.api.bedrock.invocation_routes import router as invocation_router
from tuneforge.api.bedrock.routes import router as bedrock_router
from tuneforge.api.bedrock.serving_routes import router as serving_router
from tuneforge.api.edge import CONSOLE, OPENAI, Edge, aws_error, surface_of
from tuneforge.api.metrics import create_registry
from tuneforge.api.metrics import router as metrics_router
from tuneforge.api.openai.file_routes import router as file_router
from tuneforge.api.openai.fine_tuning_routes import router as fine_tuning_router
from tuneforge.api.openai.grader_routes import router as openai_grader_router
from tuneforge.api.openai.protocol import error_body, service_error
from tuneforge.api.openai.routes import router as openai_router
from tuneforge.api.openai.serving import OpenAIServing
from tuneforge.api.replica_routes import router as replica_router
from tuneforge.api.runtime.routes import router as runtime_router
from tuneforge.api.runtime.serving import BedrockRuntime, Inference
from tuneforge.console.routes import router as console_router
from tuneforge.console.routes import static as console_static
from tuneforge.console.session import ConsoleSessions
from tuneforge.db.session import first_line
from tuneforge.errors import ServiceError, ServiceUnavailableException
from tuneforge.jobs.supervisor import Supervisor
from tuneforge.replicas import ReplicaRegistry
from tuneforge.services import Services
from tuneforge.serving.manager import EngineManager
from tuneforge.serving.retrieval import Retriever
from tuneforge.serving.runtime import RuntimeService
from tuneforge.settings import Settings

log = logging.getLogger(__name__)

DATABASE_UNAVAILABLE = "The service's database is unavailable. Retry the request."


def is_openai(request: Request) -> bool:
    return surface_of(request.scope) == OPENAI


def error_response(request: Request, exc: ServiceError) -> Response:
    if surface_of(request.scope) == CONSOLE:
        return PlainTextResponse(f"{exc.code}: {exc.message}\n", status_code=exc.status)
    if is_openai(request):
        status, body = service_error(exc)
        return JSONResponse(body, status_code=status)
    return aws_error(exc.code, exc.status, exc.message)


def create_app(
    settings: Settings | None = None, *, run_supervisor: bool = True, run_engines: bool | None = None
) -> FastAPI:
    """``run_supervisor`` starts the job supervisor; ``run_engines`` (default: the same) the engine manager."""
    settings = settings or Settings()
    services = Services.create(settings)
    start_engines = run_supervisor if run_engines is None else run_engines
    replicas = ReplicaRegistry(services.db, settings) if run_supervisor or start_engines else None
    supervisor = Supervisor(services, replicas) if run_supervisor else None
    engines = EngineManager(
        settings, services.throughput, services.meter, services.invocation_logs, replicas, services.launcher
    )
    registry, serving_metrics = create_registry(services, engines)
    runtime = RuntimeService(
        services.throughput,
        engines,
        services.meter,
        settings.engine_start_timeout_s,
        serving_metrics,
        deployments=services.deployments,
        replicas=replicas,
        fine_tuned=services.fine_tuning.route,
    )
    inference = Inference(runtime, services.invocation_logs)
    retriever = Retriever(services.knowledge_bases, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if replicas is not None:
            replicas.start()
            services.imports.replica_id = replicas.id
        services.files.recover()
        if supervisor is not None:
            services.imports.recover(None if replicas is None else replicas.live_ids() - {replicas.id})
            supervisor.start()
        if start_engines:
            engines.start()
        try:
            yield
        finally:
            if supervisor is not None:
                supervisor.shutdown()
            services.imports.shutdown()
            engines.shutdown()
            if replicas is not None:
                replicas.stop()
            retriever.close()
            services.close()

    app = FastAPI(title="tuneforge", version=__version__, lifespan=lifespan)
    app.state.services = services
    app.state.supervisor = supervisor
    app.state.engines = engines
    app.state.runtime = runtime
    app.state.replicas = replicas
    app.state.metrics_registry = registry
    app.state.bedrock_runtime = BedrockRuntime(inference)
    app.state.retriever = retriever
    app.state.openai = OpenAIServing(inference, services.throughput, services.deployments, services.fine_tuning)

    app.state.console_sessions = ConsoleSessions.from_settings(settings)
    app.add_middleware(Edge, settings=settings, console=app.state.console_sessions, replicas=replicas)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        return error_response(request, exc)

    @app.exception_handler(OperationalError)
    async def _database_unavailable(request: Request, exc: OperationalError) -> Response:
        # PostgreSQL restarting or out of reach (or SQLite locked past its timeout): a retryable 503
        # the SDKs retry by themselves, not a 500; the pool replaces dead connections once it is back.
        log.warning("database unavailable: %s", first_line(exc))
        return error_response(request, ServiceUnavailableException(DATABASE_UNAVAILABLE))

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:])
        if surface_of(request.scope) == CONSOLE:
            return PlainTextResponse(f"Invalid value at '{where}': {first.get('msg', '')}\n", status_code=400)
        if is_openai(request):
            return JSONResponse(
                error_body(f"Invalid value at '{where}': {first.get('msg', '')}", "invalid_request_error"), 400
            )
        return aws_error("ValidationException", 400, f"Invalid value at '{where}': {first.get('msg', '')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if surface_of(request.scope) == CONSOLE:
            return PlainTextResponse(f"{exc.detail}\n", status_code=exc.status_code)
        if is_openai(request):
            return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code)
        if exc.status_code == 404:
            return aws_error("UnknownOperationException", 404, "Unknown operation")
        if exc.status_code == 405:
            return aws_error("UnknownOperationException", 405, "Method not allowed for this operation")
        return aws_error("InternalServerException", exc.status_code, str(exc.detail))

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    app.include_router(bedrock_router)
    app.include_router(import_router)
    app.include_router(invocation_router)
    app.include_router(evaluation_router)
    app.include_router(agent_router)
    app.include_router(serving_router)
    app.include_router(deployment_router)
    app.include_router(runtime_router)
    app.include_router(openai_router)
    app.include_router(openai_grader_router)
    app.include_router(file_router)
    app.include_router(fine_tuning_router)
    app.include_router(metrics_router)
    app.include_router(advisor_router)
    app.include_router(console_router)
    app.include_router(replica_router)
    app.mount("/console/static", console_static, name="console-static")
    return app
