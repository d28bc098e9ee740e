"""FastAPI dependencies: the service container, the engine manager and the runtime live on ``app.state``."""

from __future__ import annotations

from fastapi import Request

from tuneforge.api.openai.serving import OpenAIServing
from tuneforge.api.runtime.serving import BedrockRuntime
from tuneforge.services import Services
from tuneforge.serving.manager import EngineManager


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_manager(request: Request) -> EngineManager:
    manager: EngineManager = request.app.state.engines
    return manager


def get_bedrock_runtime(request: Request) -> BedrockRuntime:
    runtime: BedrockRuntime = request.app.state.bedrock_runtime
    return runtime


def get_openai(request: Request) -> OpenAIServing:
    serving: OpenAIServing = request.app.state.openai
    return serving
