"""FastAPI dependencies: the service container lives on ``app.state``."""

from __future__ import annotations

from fastapi import Request

from tuneforge.services import Services


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services
