"""Usage: hours, tokens and cost per deployment and per custom model, as a table and an SVG chart.

The numbers are ``serving.usage.usage_report``, the same report ``GET /usage`` and ``tuneforge usage``
give. The chart is SVG drawn by the template from bar geometry computed here, so every label goes
through the template's autoescaping like any other text on the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from tuneforge.console.pages import ServicesDep, render
from tuneforge.services import Services
from tuneforge.serving.usage import usage_report

router = APIRouter()

CHART_WIDTH = 480
LABEL_HEIGHT = 16
BAR_HEIGHT = 18
BAR_GAP = 10
ROW_HEIGHT = LABEL_HEIGHT + BAR_HEIGHT + BAR_GAP
VALUE_ROOM = 90
"""Room right of the longest bar for its dollar value."""


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    y: int
    width: float


def bars(items: list[tuple[str, float]]) -> list[Bar]:
    """Horizontal bars under their labels (a label never competes with its bar for width, so long
    names stay readable at 400 px), the longest filling the chart; a zero value keeps a hairline."""
    top = max((value for _, value in items), default=0.0)
    span = CHART_WIDTH - VALUE_ROOM
    return [
        Bar(label, value, index * ROW_HEIGHT, max(1.0, span * value / top) if top > 0 else 1.0)
        for index, (label, value) in enumerate(items)
    ]


def _report(services: Services) -> dict[str, Any]:
    services.meter.flush()
    return usage_report(services.db, services.catalog)


@router.get("/console/usage", response_class=HTMLResponse, include_in_schema=False)
async def usage(request: Request, services: ServicesDep) -> Response:
    report = await run_in_threadpool(_report, services)
    by_deployment = [(f"{d['provisionedModelName']} (throughput)", d["cost"]) for d in report["deployments"]] + [
        (f"{d['modelDeploymentName']} (deployment)", d["cost"]) for d in report["customModelDeployments"]
    ]
    by_model = [(m["modelName"], m["cost"]) for m in report["models"]]
    return render(
        request,
        "usage.html",
        report=report,
        charts=[("Cost per deployment", bars(by_deployment)), ("Cost per model", bars(by_model))],
        chart_width=CHART_WIDTH,
        label_height=LABEL_HEIGHT,
        bar_height=BAR_HEIGHT,
        row_height=ROW_HEIGHT,
    )
