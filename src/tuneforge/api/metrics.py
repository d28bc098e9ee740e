"""``GET /metrics``: Prometheus' text exposition format (version 0.0.4), from the app's own registry.

Authentication is the edge's (:mod:`tuneforge.api.edge`): open to requests without a credential on
an anonymous loopback server like every other route, otherwise a bearer key (what Prometheus' ``authorization`` scrape
setting sends) or a SigV4 signature.

The handler is a plain function, so FastAPI runs it in its thread pool: the collectors that read
the database at scrape time never block the event loop that streams tokens.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, generate_latest

from tuneforge.jobs.metrics import JobsCollector
from tuneforge.services import Services
from tuneforge.serving.manager import EngineManager
from tuneforge.serving.metrics import DeploymentCollector, ServingMetrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

router = APIRouter()


def create_registry(services: Services, engines: EngineManager) -> tuple[CollectorRegistry, ServingMetrics]:
    """One registry per app: serving metrics, and the deployment and job gauges read at scrape time."""
    registry = CollectorRegistry()
    serving = ServingMetrics(registry)
    registry.register(DeploymentCollector(services.throughput, engines, services.arns))
    registry.register(JobsCollector(services.db))
    return registry, serving


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE)
